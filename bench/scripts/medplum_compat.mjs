// Runs @medplum/core's own client against a running fhirgate: Binary and
// attachments, Bulk Data export and websocket subscriptions, as a Medplum app
// would call them. By hand, not in CI (the product needs no Node.js):
//
//   mkdir /tmp/mc && cd /tmp/mc && npm install @medplum/core ws
//   cp <repo>/bench/scripts/medplum_compat.mjs . && \
//     node medplum_compat.mjs http://127.0.0.1:8103/ CLIENT_ID CLIENT_SECRET
//
// Each check prints "ok <name>" or throws; the exit code is 0 only when all pass.
import { MedplumClient } from '@medplum/core';
import WebSocket from 'ws';

globalThis.WebSocket ??= WebSocket;
const [baseUrl, clientId, clientSecret] = process.argv.slice(2);
if (!clientSecret) {
  console.error('usage: node medplum_compat.mjs BASE_URL CLIENT_ID CLIENT_SECRET');
  process.exit(2);
}
const medplum = new MedplumClient({ baseUrl, fetch: globalThis.fetch });
await medplum.startClientLogin(clientId, clientSecret);

function check(condition, message) {
  if (!condition) throw new Error(message);
}

// A 1x1 PNG, byte for byte.
const png = Uint8Array.from(
  Buffer.from(
    'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==',
    'base64'
  )
);

const binary = await medplum.createBinary(png, 'pixel.png', 'image/png');
check(binary.resourceType === 'Binary' && binary.contentType === 'image/png', JSON.stringify(binary));
const downloaded = new Uint8Array(await (await medplum.download(`Binary/${binary.id}`)).arrayBuffer());
check(Buffer.compare(Buffer.from(downloaded), Buffer.from(png)) === 0, 'downloaded bytes differ');
console.log('ok createBinary + download: the same bytes back');

const attachment = await medplum.createAttachment(png, 'scan.png', 'image/png');
check(attachment.contentType === 'image/png' && attachment.url, JSON.stringify(attachment));
const document = await medplum.createResource({
  resourceType: 'DocumentReference',
  status: 'current',
  content: [{ attachment }],
});
const url = document.content[0].attachment.url;
const viaUrl = new Uint8Array(await (await medplum.download(url)).arrayBuffer());
check(Buffer.compare(Buffer.from(viaUrl), Buffer.from(png)) === 0, 'attachment url bytes differ');
console.log(`ok createAttachment + DocumentReference: ${url} downloads the bytes`);

const family = `Compat${Date.now()}`;
await medplum.createResource({ resourceType: 'Patient', name: [{ family }] });
const exported = await medplum.bulkExport('', 'Patient', undefined, { pollStatusOnAccepted: true });
check(exported.output?.length > 0, JSON.stringify(exported));
let found = false;
for (const output of exported.output) {
  const text = await (await medplum.download(output.url)).text();
  found ||= text.split('\n').some((line) => line.includes(family));
}
check(found, 'the export does not hold the new Patient');
console.log(`ok bulkExport: ${exported.output.length} file(s), the new Patient among them`);

const code = `compat-${Date.now()}`;
const emitter = medplum.subscribeToCriteria(`Observation?code=${code}`);
const received = new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error('no notification within 20 s')), 20000);
  emitter.addEventListener('message', (event) => {
    clearTimeout(timer);
    resolve(event.payload);
  });
});
emitter.addEventListener('error', (event) => console.error('subscription error', event));
await new Promise((resolve) => emitter.addEventListener('connect', resolve));
const observation = await medplum.createResource({
  resourceType: 'Observation',
  status: 'final',
  code: { coding: [{ code }] },
});
const bundle = await received;
const focus = bundle.entry?.find((e) => e.resource?.resourceType === 'Observation')?.resource;
check(focus?.id === observation.id, JSON.stringify(bundle));
console.log('ok subscribeToCriteria: the websocket delivered the new Observation');
medplum.unsubscribeFromCriteria(`Observation?code=${code}`);
process.exit(0);
