#!/usr/bin/env node
// @ts-check
/**
 * The Node client at work against the demo services: list the services, stream a chat token by
 * token, stream a workflow, and read the details of two error statuses.
 *
 * Usage: node example.js [TARGET]   (default: AIP_TARGET, else localhost:50051)
 *
 * A gateway with caller keys wants one: the client sends AIP_API_KEY from the environment.
 */
'use strict';

const { AIPlatformClient, defaultTarget, statusDetails } = require('./client');

/** @typedef {import('./client').AIPlatformClient} Client */

// waitForReady (service config) makes a call wait for the gateway instead of failing at once:
// bound each call, so that a missing gateway ends the example rather than hanging it.
const CALL = { timeoutMs: 10_000 };

/** @param {Client} client */
async function listServices(client) {
  const { services } = await client.listServices({}, CALL);
  console.log('services:');
  for (const service of services) {
    const state = service.ready ? 'ready' : `not ready: ${service.not_ready_reason}`;
    console.log(`  ${service.name} (${service.type}, provider ${service.provider}, ${state})`);
  }
}

/** @param {Client} client */
async function streamChat(client) {
  process.stdout.write('StreamChat echo: ');
  const chunks = [];
  let last;
  const call = client.streamChat(
    {
      service_name: 'echo',
      messages: [{ role: 'user', content: 'hello from Node 你好' }],
      parameters: { delay_ms: 100 }, // the echo service waits before each word: watch them arrive
    },
    CALL,
  );
  for await (const message of call) {
    process.stdout.write(message.delta);
    if (message.delta) chunks.push(message.delta);
    last = message;
  }
  process.stdout.write('\n');
  console.log(`  chunks: ${JSON.stringify(chunks)}`);
  const usage = last.usage ?? { input_tokens: 0, output_tokens: 0 };
  console.log(`  finish_reason: ${last.finish_reason}, usage: ${usage.input_tokens} in, ${usage.output_tokens} out`);
}

/** @param {Client} client */
async function streamWorkflow(client) {
  console.log('StreamWorkflow echo_workflow:');
  // Plain JSON values; the client sends them as a google.protobuf.Struct.
  const call = client.streamWorkflow({ service_name: 'echo_workflow', parameters: { city: '北京', days: 3 } }, CALL);
  for await (const event of call) {
    console.log(`  ${event.node_title}: ${event.content}`);
  }
}

/**
 * Run `call`, which must fail with `expectedCode`, and print its status and details.
 * @param {string} title
 * @param {string} expectedCode
 * @param {() => Promise<unknown>} call
 */
async function expectError(title, expectedCode, call) {
  try {
    await call();
  } catch (error) {
    const status = statusDetails(/** @type {any} */ (error));
    console.log(`${title}: ${status.codeName} (${status.code}): ${status.message}`);
    if (status.errorInfo) {
      console.log(`  ErrorInfo reason: ${status.errorInfo.reason}, domain: ${status.errorInfo.domain}`);
    }
    for (const violation of status.badRequest?.field_violations ?? []) {
      console.log(`  BadRequest field: ${violation.field}: ${violation.description}`);
    }
    if (status.codeName !== expectedCode) throw error;
    return;
  }
  throw new Error(`${title}: expected ${expectedCode}, but the call succeeded`);
}

/** @param {Client} client */
async function errors(client) {
  await expectError('Chat no_such_service', 'NOT_FOUND', () =>
    client.chat({ service_name: 'no_such_service', messages: [{ role: 'user', content: 'hi' }] }, CALL),
  );
  // A stream's failure rejects the `for await` loop, after any messages that did arrive.
  await expectError('StreamChat echo with an unknown parameter', 'INVALID_ARGUMENT', async () => {
    const call = client.streamChat(
      { service_name: 'echo', messages: [{ role: 'user', content: 'hi' }], parameters: { colour: 'blue' } },
      CALL,
    );
    for await (const message of call) process.stdout.write(message.delta);
  });
}

async function main() {
  const target = process.argv[2] || defaultTarget();
  console.log(`target: ${target}`);
  const client = new AIPlatformClient(target);
  try {
    await listServices(client);
    await streamChat(client);
    await streamWorkflow(client);
    await errors(client);
  } finally {
    client.close();
  }
}

main().catch((error) => {
  const status = statusDetails(error);
  console.error(`example failed: ${status.codeName}: ${status.message || error.message}`);
  process.exitCode = 1;
});
