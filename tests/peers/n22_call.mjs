#!/usr/bin/env node
// One-shot caller using the official Node SDK (iii-sdk 0.22).
// Usage: node n22_call.mjs '<json>' (or env PEER_SPEC); engine URL from III_URL or "url".
// JSON: {"function_id", "payload"?, "timeout_ms"?, "metadata"?, "action"?, "worker_name"?, "otel"?}
// ("namespace" is refused: N22 cannot address a namespace.)
// Prints one JSON line: {"result": ...} or {"error": {"code","message","stacktrace"}}; exit 0.
// Exit 2 (message on stderr) if the engine cannot be reached within 15 s.
import { format } from 'node:util'

const SPEC = JSON.parse(process.argv[2] ?? process.env.PEER_SPEC ?? '{}')
process.env.OTEL_ENABLED = SPEC.otel ? 'true' : 'false'
for (const level of ['log', 'debug', 'info', 'warn', 'error', 'trace']) {
  const quiet = (level === 'debug' || level === 'trace') && !process.env.PEER_DEBUG
  console[level] = (...args) => {
    if (!quiet) process.stderr.write(`[${level}] ${format(...args)}\n`)
  }
}
if (SPEC.namespace || SPEC.worker_namespace) {
  process.stderr.write('n22_call: the Node SDK 0.22 has no namespaces\n')
  process.exit(2)
}
const { registerWorker } = await import('iii-sdk')
const url = SPEC.url ?? process.env.III_URL ?? 'ws://127.0.0.1:49134'
const worker = registerWorker(url, { workerName: SPEC.worker_name ?? `n22-call-${process.pid}` })
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
for (let i = 0; i < 300 && worker.connectionState !== 'connected'; i++) await sleep(50)
if (worker.connectionState !== 'connected') {
  process.stderr.write(`n22_call: could not connect to ${url}\n`)
  process.exit(2)
}
const req = { function_id: SPEC.function_id, payload: SPEC.payload }
if (SPEC.timeout_ms) req.timeoutMs = SPEC.timeout_ms
if (SPEC.metadata !== undefined) req.metadata = SPEC.metadata
if (SPEC.action !== undefined) req.action = SPEC.action
let out
try {
  const result = await worker.trigger(req)
  out = { result: result === undefined ? null : result }
} catch (err) {
  const code = err?.code ?? err?.name ?? 'Error'
  let message = String(err?.message ?? err)
  if (err?.code && message.startsWith(`${err.code}: `)) message = message.slice(err.code.length + 2)
  out = { error: { code, message, stacktrace: err?.stacktrace ?? null } }
}
process.stdout.write(JSON.stringify(out) + '\n', async () => {
  try {
    await Promise.race([worker.shutdown(), sleep(2000)])
  } catch {}
  process.exit(0)
})
