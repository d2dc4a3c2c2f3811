// Polyglot scenario, with bearer tokens: a Node client (@grpc/grpc-js with
// @grpc/proto-loader, loading segd's proto at run time) creates a
// workspace (admin token), imports contacts and defines a live segment
// (write token), streams the segment and watches it change (read token)
// while a write adds a member.
//
// usage: node scenario.js <host:port> <workspace> <admin token> <write token> <read token>
// Prints "ok <members streamed>"; exits non-zero on any mismatch.

const path = require("path");
const fs = require("fs");
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const [addr, workspace, admin, write, read] = process.argv.slice(2);
const protoDir = path.join(__dirname, "..", "..", "proto");
const files = fs
  .readdirSync(path.join(protoDir, "segd", "v1"))
  .filter((f) => f.endsWith(".proto"))
  .map((f) => path.join("segd", "v1", f));
const def = loader.loadSync(files, { includeDirs: [protoDir], keepCase: true, longs: String, defaults: true, oneofs: true });
const segd = grpc.loadPackageDefinition(def).segd.v1;
const creds = grpc.credentials.createInsecure();
const auth = (token) => {
  const m = new grpc.Metadata();
  m.set("authorization", `Bearer ${token}`);
  return m;
};
const fail = (msg) => {
  console.error(msg);
  process.exit(1);
};
const unary = (client, method, req, token) =>
  new Promise((resolve, reject) =>
    client[method](req, auth(token), (err, res) => (err ? reject(err) : resolve(res))),
  );
const upsert = (client, contacts, token) =>
  new Promise((resolve, reject) => {
    const call = client.BatchUpsertContacts(auth(token));
    const acks = [];
    call.on("data", (a) => acks.push(a));
    call.on("error", reject);
    call.on("end", () => resolve(acks));
    call.write({ contacts });
    call.end();
  });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function main() {
  const contacts = new segd.ContactService(addr, creds);
  const segments = new segd.SegmentService(addr, creds);
  const query = new segd.QueryService(addr, creds);
  const workspaces = new segd.WorkspaceService(addr, creds);

  // A read token may not write: the server says so.
  try {
    await unary(contacts, "CreateContact", { contact: { email: "x@example.com" } }, read);
    fail("a read token wrote a contact");
  } catch (e) {
    if (e.code !== grpc.status.PERMISSION_DENIED) fail(`expected PERMISSION_DENIED, got ${e.code}`);
  }

  await unary(workspaces, "CreateWorkspace", { name: workspace }, admin);
  const batch = [0, 1, 2, 3, 4].map((i) => ({ external_id: `js-${i}`, tags: i < 3 ? ["vip"] : [] }));
  const acks = await upsert(contacts, batch, write);
  if (Number(acks[acks.length - 1].created) !== 5) fail(`import: ${JSON.stringify(acks)}`);

  const { segment } = await unary(
    segments,
    "CreateSegment",
    { segment: { name: "vips", definition: { filter: "tags:vip" }, live: true } },
    write,
  );
  let built = false;
  for (let i = 0; i < 300 && !built; i++) {
    const got = await unary(segments, "GetSegment", { segment: { id: segment.id } }, read);
    built = got.segment.live_status && got.segment.live_status.built;
    if (!built) await sleep(100);
  }
  if (!built) fail("the live segment was not built");

  const watch = query.WatchMembership({ segment_ids: [segment.id], snapshot_first: true }, auth(read));
  const snapshot = new Set();
  const entered = await new Promise((resolve, reject) => {
    let complete = false;
    watch.on("data", (m) => {
      if (!complete) {
        if (m.snapshot) m.snapshot.contact_ids.forEach((id) => snapshot.add(id));
        if (m.snapshot_complete) {
          complete = true;
          if (snapshot.size !== 3) reject(new Error(`snapshot: ${[...snapshot]}`));
          setTimeout(() => upsert(contacts, [{ external_id: "js-3", tags: ["vip"] }], write).catch(reject), 200);
        }
        return;
      }
      for (const c of m.changes) {
        if (c.entered && c.segment_id === segment.id && !snapshot.has(c.contact_id)) resolve(c.contact_id);
      }
    });
    watch.on("error", (e) => {
      if (e.code !== grpc.status.CANCELLED) reject(e);
    });
  });
  watch.cancel();

  const ids = await new Promise((resolve, reject) => {
    const got = [];
    const s = query.StreamMembers({ selector: { segment_id: segment.id } }, auth(read));
    s.on("data", (m) => got.push(...m.ids));
    s.on("error", reject);
    s.on("end", () => resolve(got));
  });
  const want = [...snapshot, entered].sort();
  if (JSON.stringify([...ids].sort()) !== JSON.stringify(want)) fail(`streamed ${ids}, expected ${want}`);
  console.log(`ok ${ids.length}`);
  process.exit(0);
}

main().catch((e) => fail(e.stack || String(e)));
