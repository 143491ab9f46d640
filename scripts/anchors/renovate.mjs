#!/usr/bin/env node
// Renovate anchor: answers with Renovate's own `docker` versioning module and
// its own lookup helpers (filterVersions + the update-type classifier), loaded
// from an npm install of the `renovate` package (never copied into this repo).
//
// RENOVATE_DIR (default /tmp/renovate) is the folder holding node_modules/renovate.
//
// CLI:
//   node renovate.mjs version                 -> installed renovate version
//   node renovate.mjs tags < tags.txt         -> TSV per tag: tag, valid, stable,
//                                                major.minor.patch, compat key, docker prerelease
//   node renovate.mjs update CURRENT NEW      -> update type Renovate proposes (or none(...))
//   node renovate.mjs current NEW KNOWN...    -> the highest KNOWN tag NEW is compatible with
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import path from 'node:path';

const RENOVATE_DIR = process.env.RENOVATE_DIR || '/tmp/renovate';
const pkgDir = path.join(RENOVATE_DIR, 'node_modules', 'renovate');
const dist = path.join(pkgDir, 'dist');

export const renovateVersion = JSON.parse(
  readFileSync(path.join(pkgDir, 'package.json'), 'utf8'),
).version;

async function load(rel) {
  return import(pathToFileURL(path.join(dist, rel)).href);
}

// renovate >= 40 ships ESM (named exports); 39.x ships CJS (under `default`).
function pick(mod, name) {
  return mod[name] ?? mod.default?.[name];
}

const dockerMod = await load('modules/versioning/docker/index.js');
export const api = pick(dockerMod, 'api');
const filterMod = await load('workers/repository/process/lookup/filter.js');
const filterVersions = pick(filterMod, 'filterVersions');
const updateTypeMod = await load('workers/repository/process/lookup/update-type.js');
const classifyRelease = pick(updateTypeMod, 'classifyRelease'); // renovate >= 4x
const getUpdateType = pick(updateTypeMod, 'getUpdateType'); // renovate 39.x

// The defaults of Renovate's config options that filterVersions reads
// (lib/config/options: ignoreUnstable, ignoreDeprecated, respectLatest: true;
// maxMajorIncrement: 500). The docker datasource reports no `latest` version,
// so latestVersion is null, as in a real docker lookup.
export const defaultConfig = {
  versioning: 'docker',
  depName: 'anchor',
  ignoreUnstable: true,
  ignoreDeprecated: true,
  respectLatest: true,
  maxMajorIncrement: 500,
};

function classify(current, next) {
  if (classifyRelease) return classifyRelease(api, current, next);
  return getUpdateType(defaultConfig, api, current, next);
}

const show = (x) => (x === null || x === undefined ? '-' : String(x));

// Per tag: what the docker versioning module says.
export function describeTag(tag) {
  const valid = api.isValid(tag);
  if (!valid) {
    return { tag, valid: false, stable: '-', mmp: '-', compat: '-', prerelease: '-' };
  }
  // _parse is the module's own parser; its release length and suffix are
  // exactly what isCompatible compares, so they are the compatibility key.
  const p = api._parse(tag);
  return {
    tag,
    valid: true,
    stable: api.isStable(tag),
    mmp: [api.getMajor(tag), api.getMinor(tag), api.getPatch(tag)].map(show).join('.'),
    compat: `${p.release.length}|${p.suffix}`,
    prerelease: p.prerelease || '-',
  };
}

// Highest tag in `known` (by the module's sortVersions) that `next` is
// compatible with, i.e. a tag a Renovate user could be on for which `next`
// is a candidate. null when none.
export function highestCompatible(known, next) {
  if (!api.isVersion(next)) return null;
  const cands = known.filter((k) => api.isVersion(k) && api.isCompatible(next, k));
  if (cands.length === 0) return null;
  cands.sort((a, b) => api.sortVersions(a, b));
  return cands[cands.length - 1];
}

// What Renovate's lookup would propose for a user on `current` when `next`
// appears: the same filter chain as lookup/index (filterVersions, then the
// isCompatible filter), then its update-type classifier.
export function proposeUpdate(current, next) {
  if (!api.isVersion(next)) return 'none(invalid)';
  if (!current) return 'none(no-compatible-current)';
  if (!api.isVersion(current)) return 'none(current-invalid)';
  const releases = [{ version: next }];
  const kept = filterVersions(defaultConfig, current, null, releases, api).filter((r) =>
    api.isCompatible(r.version, current),
  );
  if (kept.length === 0) {
    if (!api.isCompatible(next, current)) return 'none(incompatible)';
    if (!api.isGreaterThan(next, current)) {
      return api.equals(next, current) ? 'none(equal)' : 'none(not-greater)';
    }
    return 'none(unstable)';
  }
  return classify(current, kept[0].version);
}

async function main() {
  const [mode, ...args] = process.argv.slice(2);
  if (mode === 'version') {
    console.log(renovateVersion);
  } else if (mode === 'tags') {
    const input = readFileSync(0, 'utf8').split('\n').map((l) => l.replace(/\r$/, '')).filter(Boolean);
    for (const t of input) {
      const d = describeTag(t);
      console.log([d.tag, d.valid, d.stable, d.mmp, d.compat, d.prerelease].join('\t'));
    }
  } else if (mode === 'update') {
    console.log(proposeUpdate(args[0], args[1]));
  } else if (mode === 'current') {
    console.log(show(highestCompatible(args.slice(1), args[0])));
  } else {
    console.error('usage: renovate.mjs version|tags|update CUR NEW|current NEW KNOWN...');
    process.exit(2);
  }
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  await main();
}
