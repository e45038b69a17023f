#!/usr/bin/env node
// Test peer: a worker built with the official Node SDK (iii-sdk 0.22, "N22").
//
// Usage: node n22_worker.mjs '<spec json>'   (or the spec in env PEER_SPEC)
// Engine URL: env III_URL (default ws://127.0.0.1:49134), or spec "url".
// Same spec, behaviours (including http_reply), stdout protocol and stdin commands as
// s25_worker.py, except: N22 has no namespace
// (a "namespace" key in the spec is an error, so a test cannot silently test the wrong thing),
// and `call` cannot name a target namespace.
//
// The SDK prints diagnostics with console.log/debug; they are redirected to stderr so stdout only
// carries the READY line and JSON event lines.

import readline from 'node:readline'
import { format } from 'node:util'

const SPEC = JSON.parse(process.argv[2] ?? process.env.PEER_SPEC ?? '{}')
process.env.OTEL_ENABLED = SPEC.otel ? 'true' : 'false'

for (const level of ['log', 'debug', 'info', 'warn', 'error', 'trace']) {
  const quiet = (level === 'debug' || level === 'trace') && !process.env.PEER_DEBUG
  console[level] = (...args) => {
    if (!quiet) process.stderr.write(`[${level}] ${format(...args)}\n`)
  }
}

const SMALL = 4096
const out = (line) => process.stdout.write(line + '\n')
const emit = (obj) => out(JSON.stringify(obj, (_k, v) => (v === undefined ? null : v)))
const small = (value) => {
  let text
  try {
    text = JSON.stringify(value)
  } catch {
    return { _unserialisable: String(value).slice(0, 200) }
  }
  if (text === undefined || text.length <= SMALL) return value
  return { _json_len: text.length }
}

if (SPEC.namespace !== undefined && SPEC.namespace !== null) {
  process.stderr.write('n22_worker: the Node SDK 0.22 has no namespace option\n')
  process.exit(2)
}

const { registerWorker } = await import('iii-sdk')
const { createChannel } = await import('iii-sdk/helpers')
const { Logger } = await import('@iii-dev/helpers/observability')
const { readFileSync } = await import('node:fs')
const SDK_VERSION = JSON.parse(
  readFileSync(new URL('./node_modules/iii-sdk/package.json', import.meta.url), 'utf8'),
).version

const url = SPEC.url ?? process.env.III_URL ?? 'ws://127.0.0.1:49134'
const options = { invocationTimeoutMs: SPEC.invocation_timeout_ms ?? 30000 }
if (SPEC.name) options.workerName = SPEC.name
if (SPEC.description) options.workerDescription = SPEC.description

const worker = registerWorker(url, options)

// Connection state changes: the SDK keeps them in a plain field set through this method.
const origSetState = worker.setConnectionState.bind(worker)
worker.setConnectionState = (state) => {
  const changed = worker.connectionState !== state
  origSetState(state)
  if (changed) emit({ event: 'state', state })
}
emit({ event: 'state', state: worker.connectionState })
// Frame tap: the SDK binds onMessage when the socket opens, so replacing it now is in time.
const TAP_TYPES = new Set(['workerregistered', 'registrationrejected', 'triggerregistrationresult', 'error'])
const origOnMessage = worker.onMessage
worker.onMessage = function (raw) {
  if (raw.length <= 65536) {
    try {
      const frame = JSON.parse(raw.toString())
      if (frame && TAP_TYPES.has(frame.type)) emit({ event: 'frame', frame })
    } catch {}
  }
  return origOnMessage.call(this, raw)
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

function makeHandler(functionId, behaviour, fnSpec) {
  return async (data, metadata) => {
    const ev = { event: 'invoke', function_id: functionId }
    if (behaviour !== 'read_channel') ev.data = fnSpec.record_full ? data : small(data)
    if (metadata !== undefined && metadata !== null) ev.metadata = small(metadata)
    emit(ev)
    const d = data !== null && typeof data === 'object' ? data : {}
    switch (behaviour) {
      case 'echo':
        return data
      case 'add':
        return { c: d.a + d.b }
      case 'boom':
        throw new Error(fnSpec.message ?? 'boom')
      case 'slow': {
        const ms = d.ms ?? fnSpec.ms ?? 1000
        await sleep(ms)
        return { slept: ms }
      }
      case 'call': {
        if (d.namespace !== undefined && d.namespace !== null) {
          throw new Error('the Node SDK 0.22 cannot call into a namespace')
        }
        const req = { function_id: d.function_id, payload: d.payload }
        if (d.timeout_ms) req.timeoutMs = d.timeout_ms
        return await worker.trigger(req)
      }
      case 'size':
        return { len: (d.s ?? '').length }
      case 'big':
        return 'x'.repeat(Number(d.n ?? fnSpec.n ?? 0))
      case 'none':
        return undefined
      case 'meta':
        return { data, metadata: metadata ?? null }
      case 'http_reply':
        // an iii-http handler: {status_code, headers} from the spec, the body echoes the request
        return {
          status_code: fnSpec.status_code ?? 200,
          headers: fnSpec.headers ?? {},
          body: {
            sdk: 'n22',
            method: d.method ?? null,
            path: d.path ?? null,
            path_params: d.path_params ?? null,
            query_params: d.query_params ?? null,
            body: d.body ?? null,
          },
        }
      case 'caller':
        return { caller: null }
      case 'log':
        new Logger().info(String(d.message ?? ''))
        return { logged: true }
      case 'read_channel': {
        const reader = d.reader
        if (!reader || typeof reader.readAll !== 'function') throw new Error('no channel reader in input')
        const messages = []
        reader.onMessage((m) => messages.push(m))
        reader.ensureConnected()
        const chunks = []
        let total = 0
        for await (const chunk of reader.stream) {
          chunks.push(chunk.length)
          total += chunk.length
        }
        return { bytes: total, chunks, messages }
      }
      case 'send_channel': {
        const ch = await createChannel(worker)
        const call = worker.trigger({ function_id: d.function_id, payload: { reader: ch.readerRef } })
        for (const m of d.messages ?? []) ch.writer.sendMessage(typeof m === 'string' ? m : JSON.stringify(m))
        const n = Number(d.n ?? 0)
        await new Promise((resolve, reject) => {
          if (n) ch.writer.stream.write(Buffer.alloc(n, 'y'))
          ch.writer.stream.end((err) => (err ? reject(err) : resolve()))
        })
        return { callee: await call }
      }
      default:
        throw new Error(`unknown behaviour ${behaviour}`)
    }
  }
}

function recordingHandler(typeId, fail) {
  const event = (kind, cfg) => ({
    event: kind,
    trigger_type: typeId,
    id: cfg.id,
    function_id: cfg.function_id,
    config: small(cfg.config ?? null),
    metadata: small(cfg.metadata ?? null),
  })
  return {
    registerTrigger: async (cfg) => {
      emit(event('register_trigger', cfg))
      if (fail) throw new Error(fail)
    },
    unregisterTrigger: async (cfg) => {
      emit(event('unregister_trigger', cfg))
    },
  }
}

const triggerTypes = new Map()
for (let tt of SPEC.trigger_types ?? []) {
  if (typeof tt === 'string') tt = { id: tt }
  const def = { id: tt.id, description: tt.description ?? `${tt.id} (test peer)` }
  triggerTypes.set(tt.id, { def, ref: worker.registerTriggerType(def, recordingHandler(tt.id, tt.fail)) })
}
const fnRefs = new Map()
for (const fn of SPEC.functions ?? []) {
  const behaviour = fn.behaviour ?? fn.behavior ?? fn.kind ?? 'echo'
  const opts = {}
  if (fn.description !== undefined) opts.description = fn.description
  if (fn.metadata !== undefined) opts.metadata = fn.metadata
  fnRefs.set(fn.id, worker.registerFunction(fn.id, makeHandler(fn.id, behaviour, fn), opts))
}
const triggers = []
for (const tr of SPEC.triggers ?? []) {
  if (tr.namespace || tr.trigger_namespace) {
    process.stderr.write('n22_worker: the Node SDK 0.22 cannot bind with a namespace\n')
    process.exit(2)
  }
  const before = new Set(worker.triggers.keys())
  const req = { type: tr.type, function_id: tr.function_id, config: tr.config }
  if (tr.metadata !== undefined) req.metadata = tr.metadata
  const handle = worker.registerTrigger(req)
  const id = [...worker.triggers.keys()].find((k) => !before.has(k)) ?? null
  triggers.push({ id, type: tr.type, function_id: tr.function_id, handle })
}

let stopping = false
async function shutdown() {
  if (stopping) return
  stopping = true
  try {
    await Promise.race([worker.shutdown(), sleep(5000)])
  } catch {}
  emit({ event: 'exit' })
  process.exit(0)
}
process.on('SIGTERM', shutdown)
process.on('SIGINT', shutdown)

// Wait for the engine-assigned worker id (workerregistered), up to 15 s.
for (let i = 0; i < 300 && !worker.workerId && !stopping; i++) await sleep(50)

let barrier = 'skipped'
if ((SPEC.barrier ?? true) && !stopping) {
  // Frames of one connection are applied in order: an answered call sent after the
  // registrations proves they have been applied. Its outcome is irrelevant.
  try {
    await worker.trigger({ function_id: 'engine::functions::list', payload: {}, timeoutMs: SPEC.barrier_timeout_ms ?? 10000 })
    barrier = 'ok'
  } catch (err) {
    barrier = err?.code ?? String(err)
  }
}

out(
  'READY ' +
    JSON.stringify({
      worker_id: worker.workerId ?? null,
      sdk: `node/${SDK_VERSION}`,
      pid: process.pid,
      barrier,
      rejected: null,
      state: worker.connectionState,
      triggers: triggers.map(({ handle: _h, ...t }) => t),
    }),
)

for (const msg of SPEC.log ?? []) new Logger().info(msg)

const errorBody = (err) => ({
  code: err?.code ?? err?.name ?? 'Error',
  message: err?.code && String(err.message).startsWith(`${err.code}: `) ? String(err.message).slice(err.code.length + 2) : String(err?.message ?? err),
  stacktrace: err?.stacktrace ?? err?.stack ?? null,
})

const rl = readline.createInterface({ input: process.stdin })
rl.on('line', async (line) => {
  line = line.trim()
  if (!line) return
  let cmd
  try {
    cmd = JSON.parse(line)
  } catch (err) {
    emit({ event: 'command_error', error: String(err) })
    return
  }
  const res = { event: 'command_result', op: cmd.op, seq: cmd.seq ?? null }
  try {
    switch (cmd.op) {
      case 'call': {
        if (cmd.namespace) throw new Error('the Node SDK 0.22 cannot call into a namespace')
        const req = { function_id: cmd.function_id, payload: cmd.payload }
        if (cmd.timeout_ms) req.timeoutMs = cmd.timeout_ms
        if (cmd.metadata !== undefined) req.metadata = cmd.metadata
        if (cmd.action !== undefined) req.action = cmd.action
        res.result = (await worker.trigger(req)) ?? null
        break
      }
      case 'unregister_trigger': {
        const t = 'index' in cmd ? triggers[cmd.index] : triggers.find((x) => x.id === cmd.id)
        t.handle.unregister()
        res.result = true
        break
      }
      case 'unregister_trigger_type': {
        const t = triggerTypes.get(cmd.id)
        if (!t) throw new Error(`unknown trigger type ${cmd.id}`)
        t.ref.unregister()
        triggerTypes.delete(cmd.id)
        res.result = true
        break
      }
      case 'unregister_function': {
        const ref = fnRefs.get(cmd.id)
        if (!ref) throw new Error(`unknown function ${cmd.id}`)
        ref.unregister()
        fnRefs.delete(cmd.id)
        res.result = true
        break
      }
      case 'log': {
        const level = cmd.level ?? 'info'
        new Logger()[level](cmd.message ?? '')
        res.result = true
        break
      }
      case 'state':
        res.result = worker.connectionState
        break
      case 'exit':
        await shutdown()
        return
      default:
        throw new Error(`unknown op ${cmd.op}`)
    }
  } catch (err) {
    res.error = errorBody(err)
  }
  emit(res)
})
// stdin closing does not stop the worker; only a signal (or "exit") does.
rl.on('close', () => {})
setInterval(() => {}, 1 << 30)
