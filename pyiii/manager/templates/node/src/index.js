// {{name}}: a worker for the iii engine.
//
// It connects to the engine at $III_URL as $III_WORKER_NAME (both set by the engine when it runs
// this worker) and registers one function:  iii trigger {{name}}::hello who=world
import { registerWorker } from 'iii-sdk'

const name = process.env.III_WORKER_NAME || '{{name}}'
const url = process.env.III_URL || 'ws://127.0.0.1:49134'

const iii = registerWorker(url, { workerName: name })

iii.registerFunction('{{name}}::hello', async (payload) => {
  const who = (payload && payload.who) || 'world'
  return { message: `hello, ${who}` }
})

console.log(`${name} is serving {{name}}::hello`)

const stop = async () => {
  await iii.shutdown() // close the connection cleanly before exiting
  process.exit(0)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
