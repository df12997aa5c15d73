// Maintainer tool (run by assets/refresh.sh; not used by the crate at build or run time).
//
// Re-derives the Emscripten file-packager manifest of dist/pglite.data from the glue at the
// very start of dist/pglite.js:
//   Module["FS_createPath"]("<parent>","<name>",true,true)      -> one call per directory
//   {files:[{filename:"...",start:N,end:M},...],remote_package_size:N} -> the file list
// and checks it against dist/pglite.data (ranges contiguous from 0, total == file size).
//
// Usage: node extract-manifest.mjs <package-dist-dir> <out.json>
// Output shape: {package, remote_package_size, dirs[], files[{filename,start,end,size}]},
// JSON.stringify(.., null, 1), no trailing newline.

import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const [distDir, outPath] = process.argv.slice(2);
if (!distDir || !outPath) {
  console.error('usage: node extract-manifest.mjs <package-dist-dir> <out.json>');
  process.exit(2);
}

const js = readFileSync(join(distDir, 'pglite.js'), 'utf8');
const fail = (msg) => {
  console.error(`extract-manifest: ${msg}`);
  process.exit(1);
};

// The loader IIFE (runWithFS + the metadata literal) sits before the first use of the
// program arguments; restrict the search to it so nothing later in the glue can match.
const endOfLoader = js.indexOf('remote_package_size:');
if (endOfLoader < 0) fail('no remote_package_size literal in pglite.js');
const loader = js.slice(0, js.indexOf('}', endOfLoader) + 1);

// Directories, in call order.
const dirs = [];
const dirRe = /Module\["FS_createPath"\]\("((?:[^"\\]|\\.)*)","((?:[^"\\]|\\.)*)",true,true\)/g;
for (const m of loader.matchAll(dirRe)) {
  const parent = JSON.parse(`"${m[1]}"`);
  const name = JSON.parse(`"${m[2]}"`);
  dirs.push(parent === '/' ? `/${name}` : `${parent}/${name}`);
}
if (dirs.length === 0) fail('no FS_createPath calls found');

// Files: the metadata literal passed to the loader.
const litStart = loader.lastIndexOf('{files:[');
if (litStart < 0) fail('no {files:[ literal found');
const lit = loader.slice(litStart);
const sizeMatch = /\],remote_package_size:(\d+)\}$/.exec(lit);
if (!sizeMatch) fail('metadata literal does not end with remote_package_size');
const remotePackageSize = Number(sizeMatch[1]);
const files = [];
const fileRe = /\{filename:"((?:[^"\\]|\\.)*)",start:(\d+),end:(\d+)\}/g;
for (const m of lit.matchAll(fileRe)) {
  const start = Number(m[2]);
  const end = Number(m[3]);
  files.push({ filename: JSON.parse(`"${m[1]}"`), start, end, size: end - start });
}
if (files.length === 0) fail('no file entries found');

// Sanity checks: every entry was parsed, ranges are contiguous, sizes add up.
const entryCount = (lit.match(/\{filename:/g) || []).length;
if (entryCount !== files.length) fail(`parsed ${files.length} of ${entryCount} file entries`);
let pos = 0;
for (const f of files) {
  if (f.start !== pos || f.end < f.start) fail(`non-contiguous range at ${f.filename}`);
  pos = f.end;
}
if (pos !== remotePackageSize) fail(`ranges end at ${pos}, remote_package_size is ${remotePackageSize}`);
const dataSize = statSync(join(distDir, 'pglite.data')).size;
if (dataSize !== remotePackageSize) fail(`pglite.data is ${dataSize} bytes, manifest says ${remotePackageSize}`);
const dirSet = new Set(dirs);
for (const f of files) {
  const parent = f.filename.slice(0, f.filename.lastIndexOf('/'));
  if (parent !== '' && !dirSet.has(parent)) fail(`parent dir of ${f.filename} is not created`);
}

const manifest = {
  package: 'pglite.data',
  remote_package_size: remotePackageSize,
  dirs,
  files,
};
writeFileSync(outPath, JSON.stringify(manifest, null, 1));
console.error(`extract-manifest: ${dirs.length} dirs, ${files.length} files, ${remotePackageSize} bytes -> ${outPath}`);
