// A metaprune.v1 client in Node, built only from protos/ (and the standard health and
// reflection definitions beside this file): health, reflection v1, upload with its own
// sha256, a hostile request or two, a job, its progress stream, download. Run by
// tests/service/test_node_interop.py, which checks what this prints against the server.
//
//   node interop.js   (env: ADDRESS, TOKEN, CHECKPOINT, OUT, PROTOS)
//
// Prints one JSON object on stdout; exits non-zero on the first unexpected outcome.
"use strict";

const crypto = require("node:crypto");
const fs = require("node:fs");
const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const { ADDRESS, TOKEN, CHECKPOINT, OUT, PROTOS } = process.env;
const CALL_MS = 30000; // deadline of every unary call
const JOB_MS = 240000; // deadline of the watch stream
const CHUNK = 512 * 1024; // upload chunk: well under max_message_bytes (checked below)
const SPEC_KEY = "metaprune.spec"; // safetensors metadata key of the architecture spec

const options = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };
const load = (file, includeDirs) =>
  grpc.loadPackageDefinition(protoLoader.loadSync(file, { ...options, includeDirs }));
const v1 = load("metaprune/v1/pruning_service.proto", [PROTOS]).metaprune.v1;
const standard = load(path.join(__dirname, "standard.proto"), []).grpc.health.v1;
const reflection = load(path.join(__dirname, "reflection_v1.proto"), []).grpc.reflection.v1;

const creds = grpc.credentials.createInsecure();
const service = new v1.PruningService(ADDRESS, creds);
const health = new standard.Health(ADDRESS, creds);
const reflect = new reflection.ServerReflection(ADDRESS, creds);
const auth = new grpc.Metadata();
auth.set("authorization", `Bearer ${TOKEN}`);
const deadline = (ms = CALL_MS) => ({ deadline: Date.now() + ms });

function unary(client, method, request, metadata = auth) {
  return new Promise((resolve, reject) =>
    client[method](request, metadata, deadline(), (err, reply) => (err ? reject(err) : resolve(reply)))
  );
}

function fail(message) {
  throw new Error(message);
}

async function expectStatus(promise, code, needle) {
  try {
    await promise;
  } catch (err) {
    if (err.code !== code || !err.details.includes(needle)) {
      fail(`expected status ${code} with "${needle}", got ${err.code}: ${err.details}`);
    }
    return err.details;
  }
  return fail(`expected status ${code}, the call succeeded`);
}

function readSpec(file) {
  // safetensors: an 8-byte little-endian header length, then the header as JSON
  const fd = fs.openSync(file, "r");
  const head = Buffer.alloc(8);
  fs.readSync(fd, head, 0, 8, 0);
  const size = Number(head.readBigUInt64LE(0));
  const header = Buffer.alloc(size);
  fs.readSync(fd, header, 0, size, 8);
  fs.closeSync(fd);
  return JSON.parse(header.toString("utf8")).__metadata__[SPEC_KEY];
}

function upload(bytes, spec, sha256) {
  return new Promise((resolve, reject) => {
    const call = service.UploadModel(auth, deadline(), (err, reply) => (err ? reject(err) : resolve(reply)));
    call.write({ header: { spec_json: spec, total_size: bytes.length, sha256, display_name: "node" } });
    for (let offset = 0; offset < bytes.length; offset += CHUNK) {
      call.write({ chunk: bytes.subarray(offset, offset + CHUNK) });
    }
    call.end();
  });
}

function reflectionServices() {
  return new Promise((resolve, reject) => {
    const call = reflect.ServerReflectionInfo(auth, deadline());
    call.on("data", (reply) => {
      resolve(reply.list_services_response.service.map((s) => s.name));
      call.end();
    });
    call.on("error", reject);
    call.write({ list_services: "" });
  });
}

function watch(jobId) {
  return new Promise((resolve, reject) => {
    const seen = { messages: 0, states: [], stages: new Set(), last: null };
    const call = service.WatchJob({ job_id: jobId }, auth, deadline(JOB_MS));
    call.on("data", (message) => {
      seen.messages += 1;
      seen.last = message.job;
      if (seen.states.at(-1) !== message.job.state) seen.states.push(message.job.state);
      if (message.event) seen.stages.add(message.event.stage);
    });
    call.on("error", reject);
    call.on("end", () => resolve({ ...seen, stages: [...seen.stages] }));
  });
}

function download(jobId, target) {
  return new Promise((resolve, reject) => {
    const call = service.DownloadResult({ job_id: jobId }, auth, deadline(JOB_MS));
    const hash = crypto.createHash("sha256");
    const out = fs.createWriteStream(target);
    let header = null;
    let size = 0;
    call.on("data", (message) => {
      if (message.part === "header") {
        header = message.header;
      } else {
        size += message.chunk.length;
        hash.update(message.chunk);
        out.write(message.chunk);
      }
    });
    call.on("error", reject);
    call.on("end", () => out.end(() => resolve({ header, size, sha256: hash.digest("hex") })));
  });
}

async function main() {
  const result = {};
  for (const name of ["", "metaprune.v1.PruningService"]) {
    const reply = await unary(health, "Check", { service: name }, new grpc.Metadata());
    if (reply.status !== "SERVING") fail(`health "${name}": ${reply.status}`);
  }
  result.reflection_v1 = await reflectionServices();

  const info = await unary(service, "GetServerInfo", {});
  result.max_message_bytes = info.limits.max_message_bytes;
  if (!(CHUNK < info.limits.max_message_bytes)) fail(`chunk ${CHUNK} >= ${info.limits.max_message_bytes}`);

  const bytes = fs.readFileSync(CHECKPOINT);
  const sha256 = crypto.createHash("sha256").update(bytes).digest("hex");
  const uploaded = await upload(bytes, readSpec(CHECKPOINT), sha256);
  result.model_id = uploaded.model.model_id;
  result.created = uploaded.created;
  if (result.model_id !== `sha256:${sha256}`) fail(`model id ${result.model_id} != sha256:${sha256}`);
  result.bad_sha256 = await expectStatus(
    upload(bytes, readSpec(CHECKPOINT), "0".repeat(64)), grpc.status.INVALID_ARGUMENT, "sha256 mismatch"
  );

  const config = {
    target: { kind: "macs", value: 1.5 },
    before_pruning: { epochs: 0 },
    after_pruning: { epochs: 0 },
    pruning: { steps: 10, curve_every: 5 },
    bn_recalibration_batches: 2,
    batch_size: 64,
    latency: { batch_size: 8, repeats: 1, warmup: 0 },
  };
  const request = { model_id: result.model_id, dataset: "synthetic", config, request_id: crypto.randomUUID() };
  result.empty_request_id = await expectStatus(
    unary(service, "CreatePruneJob", { ...request, request_id: "" }), grpc.status.INVALID_ARGUMENT, "request_id"
  );
  // protobufjs defines the well-known google.protobuf.Value with camelCase field names
  const nan = { ...config, sparse: { reg: { numberValue: NaN } } };
  result.nan_reg = await expectStatus(
    unary(service, "CreatePruneJob", { ...request, config: nan, request_id: crypto.randomUUID() }),
    grpc.status.INVALID_ARGUMENT, "config.sparse.reg must be a finite number"
  );
  const created = await unary(service, "CreatePruneJob", request);
  const again = await unary(service, "CreatePruneJob", request); // idempotent
  if (again.created || again.job.job_id !== created.job.job_id) fail("request_id was not idempotent");
  result.job_id = created.job.job_id;

  const watched = await watch(result.job_id);
  result.watch = watched;
  result.final_state = watched.last.state;
  if (result.final_state !== "JOB_STATE_SUCCEEDED") fail(`job ended ${result.final_state}: ${watched.last.error}`);
  result.summary_json = watched.last.summary_json;

  const target = path.join(OUT, "model.safetensors");
  const got = await download(result.job_id, target);
  if (got.size !== Number(got.header.total_size)) fail(`downloaded ${got.size} of ${got.header.total_size} bytes`);
  if (got.sha256 !== got.header.sha256) fail(`downloaded sha256 ${got.sha256} != ${got.header.sha256}`);
  fs.writeFileSync(path.join(OUT, "report.json"), got.header.report_json);
  result.download = { size: got.size, sha256: got.sha256, path: target };
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

main()
  .then(() => process.exit(0))
  .catch((err) => {
    process.stderr.write(`interop: ${err.stack || err}\n`);
    process.exit(1);
  });
