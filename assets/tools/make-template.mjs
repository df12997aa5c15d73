// Maintainer tool (run by assets/refresh.sh; not used by the crate at build or run time).
//
// Produces a cleanly shut down template PGDATA with the official @electric-sql/pglite package
// under Node, exactly the way a user's `new PGlite('/some/dir')` does it:
//   const db = new PGlite(dir); await db.waitReady; ...; await db.close();
// PGlite runs initdb itself (initdb.wasm) with
//   --allow-group-access --encoding UTF8 --locale=C.UTF-8 --locale-provider=libc --auth=trust
// (see St() in dist/chunk-N66TTF7B.js) and close() runs the shutdown checkpoint.
//
// Then it verifies the result:
//   * no postmaster.pid is left;
//   * global/pg_control says "shut down" (DBState 1) and its CRC-32C is valid;
//   * plpgsql is installed;
//   * a reopen of a *copy* logs no "automatic recovery" / "not properly shut down".
//
// Usage: node make-template.mjs <installed-package-dir> <out-pgdata-dir>
//   <installed-package-dir>: e.g. $tmp/node_modules/@electric-sql/pglite
//   <out-pgdata-dir>: must not exist yet (its parent is created if needed).

import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const [pkgDir, outDirArg] = process.argv.slice(2);
if (!pkgDir || !outDirArg) {
  console.error('usage: node make-template.mjs <installed-package-dir> <out-pgdata-dir>');
  process.exit(2);
}
const outDir = resolve(outDirArg);
const fail = (msg) => {
  console.error(`make-template: ${msg}`);
  process.exit(1);
};
if (existsSync(outDir)) fail(`${outDir} already exists`);
mkdirSync(dirname(outDir), { recursive: true }); // PGlite's NodeFS mkdir is not recursive

const pkg = JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8'));
const { PGlite } = await import(pathToFileURL(resolve(pkgDir, 'dist/index.js')).href);
console.error(`make-template: ${pkg.name}@${pkg.version}`);

// ---- 1. create (initdb runs inside PGlite), look around, close cleanly ------------------------
const createLog = [];
const db = new PGlite(outDir, { onStderr: (l) => { createLog.push(l); return true; } });
await db.waitReady;
const one = async (sql) => (await db.query(sql)).rows;
const info = {
  version: (await one('select version() as v'))[0].v,
  extensions: (await one('select extname from pg_extension order by 1')).map((r) => r.extname),
  databases: (await one('select datname, datcollate, datctype, pg_encoding_to_char(encoding) as enc from pg_database order by 1')),
};
for (const g of ['server_version', 'server_encoding', 'lc_messages', 'shared_buffers', 'max_connections',
  'wal_buffers', 'max_wal_size', 'min_wal_size', 'dynamic_shared_memory_type', 'data_checksums',
  'TimeZone', 'log_timezone', 'wal_segment_size', 'fsync']) {
  info[g] = Object.values((await one(`show ${g}`))[0])[0];
}
await db.close();
console.error(`make-template: create: server log (${createLog.length} lines):\n  ${createLog.join('\n  ')}`);
console.error('make-template: created and closed; settings:\n' + JSON.stringify(info, null, 2));
if (!info.extensions.includes('plpgsql')) fail('plpgsql is not installed');

// ---- 2. checks on the closed directory -------------------------------------------------------
if (!existsSync(join(outDir, 'PG_VERSION'))) fail('no PG_VERSION');
if (existsSync(join(outDir, 'postmaster.pid'))) fail('postmaster.pid left behind');

function crc32c(buf) {
  let crc = ~0 >>> 0;
  for (const b of buf) {
    crc ^= b;
    for (let k = 0; k < 8; k++) crc = crc & 1 ? (crc >>> 1) ^ 0x82f63b78 : crc >>> 1;
  }
  return ~crc >>> 0;
}
const ctl = readFileSync(join(outDir, 'global/pg_control'));
const DBSTATE = ['starting up', 'shut down', 'shut down in recovery', 'shutting down',
  'in crash recovery', 'in archive recovery', 'in production'];
const control = {
  system_identifier: ctl.readBigUInt64LE(0).toString(),
  pg_control_version: ctl.readUInt32LE(8),
  catalog_version_no: ctl.readUInt32LE(12),
  state: DBSTATE[ctl.readUInt32LE(16)] ?? `unknown (${ctl.readUInt32LE(16)})`,
  time: new Date(Number(ctl.readBigInt64LE(24)) * 1000).toISOString(),
  checkPoint: ctl.readBigUInt64LE(32).toString(16),
};
// ControlFileData ends with its CRC-32C; find the offset where the CRC of the prefix matches.
for (let off = 64; off + 4 <= 1024; off += 4) {
  if (crc32c(ctl.subarray(0, off)) === ctl.readUInt32LE(off)) { control.crc_offset = off; break; }
}
console.error('make-template: pg_control ' + JSON.stringify(control));
if (control.state !== 'shut down') fail(`pg_control state is "${control.state}"`);
if (control.crc_offset === undefined) fail('pg_control CRC-32C does not verify');

// ---- 3. reopen a copy: must be a clean start, no WAL recovery ---------------------------------
const scratch = mkdtempSync(join(tmpdir(), 'pglite-template-check-'));
try {
  const copy = join(scratch, 'pgdata');
  cpSync(outDir, copy, { recursive: true });
  const reopenLog = [];
  const db2 = new PGlite(copy, { onStderr: (l) => { reopenLog.push(l); return true; } });
  await db2.waitReady;
  const ext2 = (await db2.query('select extname from pg_extension order by 1')).rows.map((r) => r.extname);
  await db2.close();
  const bad = reopenLog.filter((l) => /recovery|not properly shut down|redo /i.test(l));
  console.error(`make-template: reopen of a copy: extensions ${ext2.join(',')}; server log:\n  ${reopenLog.join('\n  ')}`);
  if (bad.length) fail(`reopen needed recovery:\n${bad.join('\n')}`);
  if (!ext2.includes('plpgsql')) fail('plpgsql missing after reopen');
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
console.error(`make-template: OK -> ${outDir}`);
process.exit(0);
