// send.js - sends spans and logs to an OTLP endpoint with the real OpenTelemetry JS SDK (tests/integration/test_otel_js.py).
//
//   node send.js PROTOCOL ENDPOINT RUN_ID SPANS LOGS [COMPRESSION]
//
// PROTOCOL is http (OTLP protobuf over HTTP: ENDPOINT is the base, e.g. http://127.0.0.1:4318, and
// /v1/traces, /v1/logs are appended) or grpc (ENDPOINT e.g. http://127.0.0.1:4317, plaintext h2c).
// COMPRESSION is none (the default) or gzip. Spans come in traces of three: a root span (SERVER)
// with two children (INTERNAL, CLIENT); span i has seq=i and attributes of every type, the root
// an event and the last child a link to the previous trace's root. Log record i has seq=i; the
// even ones are emitted inside an active span (so they carry its trace and span ids).
// Prints one JSON line: what was sent (ids, counts), for the test to compare with what arrives.
// Exits 1 when any export failed: an exporter's result callback not SUCCESS, or an error or
// warning (a partial success) reported through the SDK's diagnostic logger.
'use strict';

const api = require('@opentelemetry/api');
const { logs, SeverityNumber } = require('@opentelemetry/api-logs');
const { AsyncLocalStorageContextManager } = require('@opentelemetry/context-async-hooks');
const { defaultResource, resourceFromAttributes } = require('@opentelemetry/resources');
const { ATTR_SERVICE_NAME } = require('@opentelemetry/semantic-conventions');
const { BasicTracerProvider, BatchSpanProcessor } = require('@opentelemetry/sdk-trace-base');
const { LoggerProvider, BatchLogRecordProcessor } = require('@opentelemetry/sdk-logs');

const [protocol, endpoint, runId, nSpansArg, nLogsArg, compressionArg] = process.argv.slice(2);
const nSpans = Number(nSpansArg);
const nLogs = Number(nLogsArg);
const compression = compressionArg || 'none';
if (!['http', 'grpc'].includes(protocol) || !endpoint || !runId || !(nSpans >= 0) ||
    !(nLogs >= 0) || !['none', 'gzip'].includes(compression)) {
  process.stderr.write('usage: node send.js http|grpc ENDPOINT RUN_ID SPANS LOGS [none|gzip]\n');
  process.exit(2);
}

// The SDK reports failed exports as diag errors, and a partial success (records the receiver
// rejected) as a diag warning: both fail the run.
const errors = [];
const fail = (level) => (...a) => errors.push(`diag ${level}: ` + a.map((x) =>
  (typeof x === 'string' ? x : JSON.stringify(x))).join(' '));
api.diag.setLogger({
  error: fail('error'), warn: fail('warn'), info: () => {}, debug: () => {}, verbose: () => {},
}, api.DiagLogLevel.WARN);

// Every export's result is checked: an exporter calls back with { code: 0 } (SUCCESS) or
// { code: 1, error } (FAILED).
const results = { spans: { calls: 0, items: 0 }, logs: { calls: 0, items: 0 } };
function checked(exporter, what) {
  const orig = exporter.export.bind(exporter);
  exporter.export = (items, done) => orig(items, (result) => {
    results[what].calls++;
    if (result.code !== 0) {
      const err = result.error && result.error.stack || result.error;
      errors.push(`${what} export of ${items.length} failed: ${err}`);
    } else {
      results[what].items += items.length;
    }
    done(result);
  });
  return exporter;
}

function exporters() {
  const opts = { compression, timeoutMillis: 10000 };
  if (protocol === 'http') {
    const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-proto');
    const { OTLPLogExporter } = require('@opentelemetry/exporter-logs-otlp-proto');
    return [new OTLPTraceExporter({ ...opts, url: endpoint + '/v1/traces' }),
      new OTLPLogExporter({ ...opts, url: endpoint + '/v1/logs' })];
  }
  const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-grpc');
  const { OTLPLogExporter } = require('@opentelemetry/exporter-logs-otlp-grpc');
  return [new OTLPTraceExporter({ ...opts, url: endpoint }),
    new OTLPLogExporter({ ...opts, url: endpoint })];
}

async function main() {
  api.context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  // The SDK's default resource (telemetry.sdk.*) with ours over it.
  const resource = defaultResource().merge(
    resourceFromAttributes({ [ATTR_SERVICE_NAME]: 'otel-js-test', 'run.id': runId }));
  const [spanExporter, logExporter] = exporters();
  // Small batches: several export requests per signal, not one.
  const batch = { maxExportBatchSize: 7, scheduledDelayMillis: 50, maxQueueSize: 4096 };
  const tracerProvider = new BasicTracerProvider({
    resource, spanProcessors: [new BatchSpanProcessor(checked(spanExporter, 'spans'), batch)],
  });
  const loggerProvider = new LoggerProvider({
    resource,
    processors: [new BatchLogRecordProcessor({ exporter: checked(logExporter, 'logs'), ...batch })],
  });
  api.trace.setGlobalTracerProvider(tracerProvider);
  logs.setGlobalLoggerProvider(loggerProvider);
  const tracer = api.trace.getTracer('keel-interop', '1.2.3');
  const logger = logs.getLogger('keel-interop-logs', '4.5.6');

  const summary = { protocol, compression, run_id: runId, spans: [], logs: [] };
  const attrs = (i) => ({
    seq: i, 'run.id': runId, 'attr.string': `value-${i}`, 'attr.double': i + 0.5,
    'attr.bool': i % 2 === 0, 'attr.strings': ['a', `b${i}`], 'attr.ints': [i, i * 2],
  });
  const kinds = [api.SpanKind.SERVER, api.SpanKind.INTERNAL, api.SpanKind.CLIENT];
  let prevRoot = null;
  let root = null;
  for (let i = 0; i < nSpans; i++) {
    const pos = i % 3;
    const options = { kind: kinds[pos], attributes: attrs(i) };
    let ctx = api.ROOT_CONTEXT;
    if (pos !== 0) ctx = api.trace.setSpan(ctx, root);
    if (pos === 2 && prevRoot) {
      options.links = [{ context: prevRoot.spanContext(), attributes: { 'link.seq': i } }];
    }
    const span = tracer.startSpan(`span-${i}`, options, ctx);
    if (pos === 0) {
      span.addEvent('started', { 'event.seq': i });
      span.setStatus({ code: api.SpanStatusCode.OK });
    } else if (pos === 2) {
      span.setStatus({ code: api.SpanStatusCode.ERROR, message: `failed-${i}` });
    }
    const sc = span.spanContext();
    summary.spans.push({
      seq: i, name: `span-${i}`, trace_id: sc.traceId, span_id: sc.spanId,
      parent_span_id: pos === 0 ? '' : root.spanContext().spanId, kind: kinds[pos],
      link: options.links ? prevRoot.spanContext().spanId : null,
    });
    if (pos === 0) {
      if (root) root.end();
      prevRoot = root;
      root = span;
    } else {
      span.end();
    }
  }
  if (root) root.end();

  for (let i = 0; i < nLogs; i++) {
    const record = {
      severityNumber: i % 3 === 0 ? SeverityNumber.WARN : SeverityNumber.INFO,
      severityText: i % 3 === 0 ? 'WARN' : 'INFO',
      body: i % 4 === 3 ? { msg: `structured-${i}`, n: i } : `log line ${i}`,
      attributes: { ...attrs(i), 'attr.bytes': new Uint8Array([i & 255, 1, 2]) },
    };
    if (i % 2 === 0) {
      // Emitted inside an active span: the SDK takes the trace and span ids from the context.
      tracer.startActiveSpan(`log-parent-${i}`, (span) => {
        logger.emit(record);
        const sc = span.spanContext();
        summary.logs.push({ seq: i, trace_id: sc.traceId, span_id: sc.spanId });
        summary.spans.push({ seq: null, name: `log-parent-${i}`, trace_id: sc.traceId,
          span_id: sc.spanId, parent_span_id: '', kind: api.SpanKind.INTERNAL, link: null });
        span.end();
      });
    } else {
      logger.emit(record);
      summary.logs.push({ seq: i, trace_id: '', span_id: '' });
    }
  }

  for (const [what, step] of [['spans flush', () => tracerProvider.forceFlush()],
    ['logs flush', () => loggerProvider.forceFlush()],
    ['spans shutdown', () => tracerProvider.shutdown()],
    ['logs shutdown', () => loggerProvider.shutdown()]]) {
    try {
      await step();
    } catch (e) {
      errors.push(`${what}: ${e && e.message || e}`);
    }
  }

  const sentSpans = summary.spans.length;
  if (results.spans.items !== sentSpans) {
    errors.push(`spans exported ${results.spans.items} of ${sentSpans}`);
  }
  if (results.logs.items !== nLogs) errors.push(`logs exported ${results.logs.items} of ${nLogs}`);
  summary.exports = results;
  summary.errors = errors;
  process.stdout.write(JSON.stringify(summary) + '\n');
  if (errors.length) {
    process.stderr.write(errors.join('\n') + '\n');
    process.exitCode = 1;
  }
}

main().catch((e) => {
  process.stderr.write(`send.js: ${e && e.stack || e}\n`);
  process.exitCode = 1;
});
