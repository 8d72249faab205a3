// @ts-check
/**
 * A Node.js client of the AI Platform gateway (aiplatform.v1.AIPlatformService) on @grpc/grpc-js,
 * loading the repository's protos/ at run time, with the shared client service config.
 */
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const DEFAULT_TARGET = 'localhost:50051';
/** The environment variable the caller key comes from when the options give no `apiKey`. */
const API_KEY_VARIABLE = 'AIP_API_KEY';
/** What gRPC metadata can carry in a text value: printable ASCII (grpc-js checks the same). */
const METADATA_TEXT = /^[\x20-\x7e]*$/;
/** The gateway's protos, loaded as they are: no generated code to keep in step. */
const PROTOS_DIR = path.resolve(__dirname, '..', '..', 'protos');
/** The service config every client of the gateway uses (deploy/README.md#the-client-service-config). */
const SERVICE_CONFIG_PATH = path.resolve(__dirname, '..', 'service_config.json');
/** Copies of googleapis' google/rpc protos: neither grpc-js nor protobufjs ships them. */
const RPC_PROTOS_DIR = path.join(__dirname, 'protos');
const STATUS_DETAILS_KEY = 'grpc-status-details-bin';
const SERVICE_NAME = 'aiplatform.v1.AIPlatformService';

/**
 * How messages look in JavaScript: field names as in the proto (`service_name`), enums as their
 * names (`'FINISH_REASON_STOP'`), int64 as numbers (token counts are far below 2**53), and every
 * field present (unset messages are `null`).
 */
const CONVERSION = { keepCase: true, longs: Number, enums: String, defaults: true };

/**
 * The messages as JavaScript sees them, for editors and `tsc --checkJs`; the proto is the reference.
 * @typedef {{input_tokens: number, output_tokens: number, total_tokens: number}} Usage
 * @typedef {{name: string, type: string, description: string, required: boolean}} ParameterInfo
 * @typedef {object} ServiceInfo
 * @property {string} name what requests put in `service_name`
 * @property {string} type 'chat' or 'workflow'
 * @property {string} provider
 * @property {string} description
 * @property {boolean} ready
 * @property {boolean} streaming
 * @property {string} not_ready_reason
 * @property {ParameterInfo[]} parameters
 * @typedef {{services: ServiceInfo[]}} ListServicesResponse
 * @typedef {{id: string, type: string, function_name: string, arguments: string}} ToolCall
 * @typedef {object} ChatResponse
 * @property {string} content
 * @property {string} reasoning
 * @property {string} conversation_id
 * @property {Usage | null} usage
 * @property {string} finish_reason e.g. 'FINISH_REASON_STOP'
 * @property {string} chat_id
 * @property {ToolCall[]} tool_calls
 * @property {string[]} follow_ups
 * @typedef {object} StreamChatResponse
 * @property {string} delta the next piece of the answer
 * @property {string} reasoning_delta
 * @property {Usage | null} usage set on the last message
 * @property {string} conversation_id set on the last message
 * @property {string} finish_reason 'FINISH_REASON_UNSPECIFIED' on all but the last message
 * @property {string} chat_id
 * @property {ToolCall[]} tool_calls
 * @property {string[]} follow_ups
 * @typedef {{event_id: string, type: number, data: string}} WorkflowInterrupt
 * @typedef {object} RunWorkflowResponse
 * @property {string} output the workflow's output, JSON text
 * @property {string} execute_id
 * @property {string} debug_url
 * @property {Usage | null} usage
 * @property {WorkflowInterrupt | null} interrupt set when the workflow waits for input
 * @typedef {object} WorkflowEvent a StreamWorkflowResponse or ResumeWorkflowResponse
 * @property {string} content
 * @property {string} node_title
 * @property {string} node_seq_id
 * @property {boolean} node_is_finish
 * @property {WorkflowInterrupt | null} interrupt set when the workflow waits for input
 * @property {Usage | null} usage
 * @property {string} node_id
 */

/** @type {grpc.ServiceClientConstructor | undefined} */
let serviceConstructor;
/** @type {protobuf.Root | undefined} */
let rpcRoot;

/** @returns {string} the target to call: `AIP_TARGET`, else localhost:50051. */
function defaultTarget() {
  return process.env.AIP_TARGET || DEFAULT_TARGET;
}

/**
 * The `authorization` value for a caller key, or null for none.
 * @param {string | undefined} apiKey the key; `undefined` takes `AIP_API_KEY`, '' means none
 * @returns {string | null}
 */
function authorizationFor(apiKey) {
  const key = (apiKey === undefined ? (process.env[API_KEY_VARIABLE] ?? '') : apiKey).trim();
  if (key === '') return null;
  // grpc-js would refuse it at the first call with an error that quotes the value: refuse it here, unquoted.
  if (!METADATA_TEXT.test(key)) {
    throw new TypeError(`the caller key (apiKey or ${API_KEY_VARIABLE}) may hold only printable ASCII characters`);
  }
  return `Bearer ${key}`;
}

/** @returns {string} clients/service_config.json, as JSON text for the `grpc.service_config` option. */
function loadServiceConfig() {
  // Parsed here so that a broken file fails with its name, not inside the channel.
  return JSON.stringify(JSON.parse(fs.readFileSync(SERVICE_CONFIG_PATH, 'utf8')));
}

/** @returns {grpc.ServiceClientConstructor} the AIPlatformService client class, loaded once. */
function loadService() {
  if (serviceConstructor === undefined) {
    // google/protobuf/struct.proto is not in protos/: proto-loader takes it from protobufjs's bundled copies.
    const definition = protoLoader.loadSync('aiplatform/v1/aiplatform.proto', {
      ...CONVERSION,
      includeDirs: [PROTOS_DIR],
    });
    const loaded = /** @type {any} */ (grpc.loadPackageDefinition(definition));
    serviceConstructor = /** @type {grpc.ServiceClientConstructor} */ (loaded.aiplatform.v1.AIPlatformService);
  }
  return serviceConstructor;
}

/**
 * A plain JSON value as a google.protobuf.Value.
 * @param {unknown} value
 * @param {string} where the key path, for the error message
 * @returns {object}
 */
function toValue(value, where) {
  if (value === null) return { nullValue: 'NULL_VALUE' };
  if (typeof value === 'string') return { stringValue: value };
  if (typeof value === 'boolean') return { boolValue: value };
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new TypeError(`${where}: ${value} is not a JSON number`);
    return { numberValue: value };
  }
  if (Array.isArray(value)) {
    return { listValue: { values: value.map((item, index) => toValue(item, `${where}[${index}]`)) } };
  }
  if (typeof value === 'object')
    return { structValue: toStruct(/** @type {Record<string, unknown>} */ (value), where) };
  throw new TypeError(`${where}: a ${typeof value} is not a JSON value`);
}

/**
 * A plain object as a google.protobuf.Struct, the type of every request's `parameters`.
 * Numbers travel as doubles: pass ids as strings (the gateway turns integral numbers back into integers).
 * @param {Record<string, unknown>} object
 * @param {string} [where]
 * @returns {{fields: Record<string, object>}}
 */
function toStruct(object, where = 'parameters') {
  /** @type {Record<string, object>} */
  const fields = {};
  for (const [key, value] of Object.entries(object)) fields[key] = toValue(value, `${where}.${key}`);
  return { fields };
}

/**
 * @typedef {object} CallOptions
 * @property {number} [timeoutMs] the call's deadline, from now (the service config's default is 600 s)
 * @property {grpc.Metadata | Record<string, string>} [metadata] request metadata, e.g. `{'x-request-id': 'r-1'}`
 * @property {boolean} [waitForReady] wait for a ready gateway until the deadline instead of failing
 *   with UNAVAILABLE at once; default: what the service config says
 */

/**
 * Whether the service config asks the gateway's methods to wait for ready. grpc-js (1.14) parses
 * `waitForReady` in a method config but only honours the per-call option, so the client sets that.
 * @param {string | object | null} serviceConfig
 * @returns {boolean}
 */
function waitsForReady(serviceConfig) {
  if (serviceConfig === null) return false;
  const config = typeof serviceConfig === 'string' ? JSON.parse(serviceConfig) : serviceConfig;
  return (config.methodConfig ?? []).some(
    (/** @type {{name?: {service?: string}[], waitForReady?: boolean}} */ methodConfig) =>
      methodConfig.waitForReady === true &&
      (methodConfig.name ?? []).some((name) => !name.service || name.service === SERVICE_NAME),
  );
}

/**
 * @typedef {object} ClientOptions
 * @property {grpc.ChannelCredentials} [credentials] TLS credentials; plaintext when left out
 * @property {string | object | null} [serviceConfig] JSON text or object; clients/service_config.json when left
 *   out, `null` for none
 * @property {grpc.ChannelOptions} [channelOptions] more grpc-js channel options
 * @property {string} [apiKey] the caller key, for a gateway with `[keys.NAME]` configured: sent with every call as
 *   `authorization: Bearer <key>`, over plaintext and TLS alike. Left out: `AIP_API_KEY`; '' sends none. It is
 *   kept in a private field, out of `console.log(client)` and of errors; an `authorization` entry in a call's
 *   `metadata` replaces it.
 */

/** The gateway's six RPCs as promises (unary) and async-iterable streams (server streaming). */
class AIPlatformClient {
  /**
   * `Bearer <key>`, or null: private, so that no inspection or JSON of the client shows it.
   * @type {string | null}
   */
  #authorization;

  /**
   * @param {string} [target] `host:port`, or any grpc-js target (`dns:///…`, `ipv4:a:p,b:p`); default `defaultTarget()`
   * @param {ClientOptions} [options]
   */
  constructor(target = defaultTarget(), options = {}) {
    const { credentials = grpc.credentials.createInsecure(), channelOptions = {} } = options;
    const serviceConfig = options.serviceConfig === undefined ? loadServiceConfig() : options.serviceConfig;
    /** @type {grpc.ChannelOptions} */
    const channel = { ...channelOptions };
    if (serviceConfig !== null) {
      channel['grpc.service_config'] =
        typeof serviceConfig === 'string' ? serviceConfig : JSON.stringify(serviceConfig);
    }
    const Service = loadService();
    this.#authorization = authorizationFor(options.apiKey);
    this.target = target;
    this.waitForReady = waitsForReady(serviceConfig);
    /** The grpc-js stub itself: methods `ListServices` … `ResumeWorkflow` with grpc-js's own signatures. */
    this.stub = /** @type {any} */ (new Service(target, credentials, channel));
  }

  /** @param {{service_type?: string}} [request] @param {CallOptions} [callOptions] @returns {Promise<ListServicesResponse>} */
  listServices(request = {}, callOptions = {}) {
    return this.#unary('ListServices', request, callOptions);
  }

  /** @param {ChatRequest} request @param {CallOptions} [callOptions] @returns {Promise<ChatResponse>} */
  chat(request, callOptions = {}) {
    return this.#unary('Chat', withStruct(request), callOptions);
  }

  /** @param {ChatRequest} request @param {CallOptions} [callOptions] @returns {grpc.ClientReadableStream<StreamChatResponse>} */
  streamChat(request, callOptions = {}) {
    return this.#stream('StreamChat', withStruct(request), callOptions);
  }

  /** @param {WorkflowRequest} request @param {CallOptions} [callOptions] @returns {Promise<RunWorkflowResponse>} */
  runWorkflow(request, callOptions = {}) {
    return this.#unary('RunWorkflow', withStruct(request), callOptions);
  }

  /** @param {WorkflowRequest} request @param {CallOptions} [callOptions] @returns {grpc.ClientReadableStream<WorkflowEvent>} */
  streamWorkflow(request, callOptions = {}) {
    return this.#stream('StreamWorkflow', withStruct(request), callOptions);
  }

  /**
   * @param {{service_name: string, workflow_id?: string, event_id: string, resume_data: string, interrupt_type?: number}} request
   * @param {CallOptions} [callOptions]
   * @returns {grpc.ClientReadableStream<WorkflowEvent>}
   */
  resumeWorkflow(request, callOptions = {}) {
    return this.#stream('ResumeWorkflow', request, callOptions);
  }

  /** Close the channel (grpc-js `Client.close()`): later calls fail at once. */
  close() {
    this.stub.close();
  }

  /** @param {string} method @param {object} request @param {CallOptions} callOptions @returns {Promise<any>} */
  #unary(method, request, callOptions) {
    const [metadata, options] = this.#callArguments(callOptions);
    return new Promise((resolve, reject) => {
      this.stub[method](
        request,
        metadata,
        options,
        (/** @type {grpc.ServiceError | null} */ error, /** @type {any} */ response) =>
          error ? reject(error) : resolve(response),
      );
    });
  }

  /** @param {string} method @param {object} request @param {CallOptions} callOptions @returns {grpc.ClientReadableStream<any>} */
  #stream(method, request, callOptions) {
    const [metadata, options] = this.#callArguments(callOptions);
    /** @type {grpc.ClientReadableStream<any>} */
    const call = this.stub[method](request, metadata, options);
    // grpc-js leaves the call running when its stream is destroyed (a `break` out of `for await`),
    // and the gateway's upstream with it: cancel it then. After the status came this does nothing.
    call.once('close', () => {
      // The CANCELLED status this cancel causes arrives as an 'error' nobody reads any more; an
      // 'error' event without a listener would end the process.
      call.on('error', () => {});
      call.cancel();
    });
    return call;
  }

  /** @param {CallOptions} callOptions @returns {[grpc.Metadata, grpc.CallOptions]} */
  #callArguments(callOptions) {
    const [metadata, options] = callArguments({ waitForReady: this.waitForReady, ...callOptions });
    // Per call rather than as call credentials: grpc-js combines those only with TLS channel credentials.
    if (this.#authorization !== null && metadata.get('authorization').length === 0) {
      metadata.set('authorization', this.#authorization);
    }
    return [metadata, options];
  }
}

/**
 * @typedef {object} ChatRequest
 * @property {string} service_name the service, as ListServices lists it (e.g. 'echo')
 * @property {{role: string, content: string}[]} messages the conversation; the last one is the user's turn
 * @property {Record<string, unknown>} [parameters] plain JSON values, sent as a google.protobuf.Struct
 * @property {string} [user_id]
 * @property {string} [conversation_id]
 */

/**
 * @typedef {object} WorkflowRequest
 * @property {string} service_name the service, as ListServices lists it (e.g. 'echo_workflow')
 * @property {string} [workflow_id]
 * @property {Record<string, unknown>} [parameters] the workflow's inputs, plain JSON values
 * @property {string} [bot_id]
 * @property {string} [app_id]
 */

/**
 * @template {{parameters?: Record<string, unknown>}} T
 * @param {T} request
 * @returns {object} the request with `parameters` as a Struct
 */
function withStruct(request) {
  if (request.parameters === undefined || request.parameters === null) return request;
  return { ...request, parameters: toStruct(request.parameters) };
}

/** @param {CallOptions} callOptions @returns {[grpc.Metadata, grpc.CallOptions]} */
function callArguments({ timeoutMs, metadata, waitForReady = false }) {
  let grpcMetadata = new grpc.Metadata();
  if (metadata instanceof grpc.Metadata) {
    grpcMetadata = metadata.clone();
  } else if (metadata) {
    for (const [key, value] of Object.entries(metadata)) grpcMetadata.set(key, value);
  }
  grpcMetadata.setOptions({ waitForReady });
  return [grpcMetadata, timeoutMs === undefined ? {} : { deadline: Date.now() + timeoutMs }];
}

/** @returns {protobuf.Root} google.rpc.Status and the error detail messages, loaded once. */
function loadRpcTypes() {
  if (rpcRoot === undefined) {
    // Their imports (google/protobuf/any.proto, duration.proto) resolve to protobufjs's bundled copies.
    rpcRoot = new protobuf.Root().loadSync(
      ['status.proto', 'error_details.proto'].map((name) => path.join(RPC_PROTOS_DIR, 'google', 'rpc', name)),
      { keepCase: true },
    );
  }
  return rpcRoot;
}

/** @type {Record<number, string>} */
const CODE_NAMES = Object.fromEntries(
  Object.entries(grpc.status)
    .filter(([, code]) => typeof code === 'number')
    .map(([name, code]) => [code, name]),
);

/**
 * @typedef {object} StatusDetails
 * @property {number} code the gRPC status code (grpc.status.NOT_FOUND is 5)
 * @property {string} codeName its name, e.g. 'NOT_FOUND'
 * @property {string} message the status message
 * @property {{reason: string, domain: string, metadata: Record<string, string>} | null} errorInfo
 *   google.rpc.ErrorInfo: `reason` (e.g. 'SERVICE_NOT_FOUND'), `domain` ('aiplatform.v1'), and for upstream
 *   failures `metadata.provider`, `metadata.upstream_code`, `metadata.log_id`
 * @property {{field_violations: {field: string, description: string}[]} | null} badRequest
 *   google.rpc.BadRequest, for invalid input: which field, and what is wrong with it
 * @property {{retry_delay: {seconds: number, nanos: number} | null} | null} retryInfo
 *   google.rpc.RetryInfo: when the upstream said to try again
 * @property {Record<string, unknown>[]} details every detail, each with its type in '@type'
 *   (a type not known here keeps its bytes in `value`)
 */

/**
 * The status of a failed call with its google.rpc details, read from the `grpc-status-details-bin` trailer.
 * @param {Partial<grpc.ServiceError>} error what a failed call rejected with or emitted
 * @returns {StatusDetails}
 */
function statusDetails(error) {
  const code = error.code ?? grpc.status.UNKNOWN;
  const [bytes] = error.metadata ? error.metadata.get(STATUS_DETAILS_KEY) : [];
  // The trailer repeats the status; a status grpc-js made itself (a deadline, no connection) has none.
  if (bytes instanceof Buffer) {
    try {
      return decodeStatus(bytes);
    } catch {
      // Not a google.rpc.Status (not from this gateway): the status itself is still true.
    }
  }
  return {
    code,
    codeName: CODE_NAMES[code] ?? String(code),
    message: error.details ?? '',
    errorInfo: null,
    badRequest: null,
    retryInfo: null,
    details: [],
  };
}

/**
 * A serialized google.rpc.Status (the `grpc-status-details-bin` value) with its details decoded.
 * @param {Uint8Array} bytes
 * @returns {StatusDetails}
 */
function decodeStatus(bytes) {
  const root = loadRpcTypes();
  const status = /** @type {any} */ (root.lookupType('google.rpc.Status').decode(bytes));
  const details = status.details.map((/** @type {{type_url: string, value: Uint8Array}} */ any) => {
    const typeName = any.type_url.slice(any.type_url.lastIndexOf('/') + 1);
    const type = root.lookup(typeName);
    if (!(type instanceof protobuf.Type)) return { '@type': typeName, value: Buffer.from(any.value) };
    return { '@type': typeName, ...type.toObject(type.decode(any.value), CONVERSION) };
  });
  /** @param {string} typeName @returns {any} */
  const first = (typeName) => details.find((/** @type {any} */ detail) => detail['@type'] === typeName) ?? null;
  return {
    code: status.code,
    codeName: CODE_NAMES[status.code] ?? String(status.code),
    message: status.message,
    errorInfo: first('google.rpc.ErrorInfo'),
    badRequest: first('google.rpc.BadRequest'),
    retryInfo: first('google.rpc.RetryInfo'),
    details,
  };
}

module.exports = {
  AIPlatformClient,
  API_KEY_VARIABLE,
  DEFAULT_TARGET,
  PROTOS_DIR,
  SERVICE_CONFIG_PATH,
  createClient: (/** @type {string | undefined} */ target, /** @type {ClientOptions | undefined} */ options) =>
    new AIPlatformClient(target, options),
  decodeStatus,
  defaultTarget,
  loadServiceConfig,
  statusDetails,
  toStruct,
  grpc,
};
