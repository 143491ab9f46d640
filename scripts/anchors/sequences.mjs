#!/usr/bin/env node
// Replays tests/fixtures/version-sequences.txt through both anchors and prints
// the `seq` section of version-anchors.tsv (header line first).
//
//   node sequences.mjs SEQUENCES_FILE FLUX_ANCHOR_BINARY
//
// Per step (step 0 = the baseline, for context; steps 1.. = the pushes):
//   flux_selected_after_step  the tag Flux's semver ImagePolicy selects from every
//                             tag known after the step (flux-anchor select, with the
//                             sequence's range; see flux/main.go for the constraint)
//   renovate_update_...       Renovate's proposal for a user on the highest tag known
//                             before the step that the pushed tag is compatible with
//                             (docker versioning), to the pushed tag.
import { readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { highestCompatible, proposeUpdate } from './renovate.mjs';

const [seqFile, fluxBin] = process.argv.slice(2);
if (!seqFile || !fluxBin) {
  console.error('usage: sequences.mjs SEQUENCES_FILE FLUX_ANCHOR_BINARY');
  process.exit(2);
}

function parseSequences(text) {
  const seqs = [];
  let cur = null;
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/\r$/, '').trim();
    if (!line) return;
    const fail = (msg) => {
      throw new Error(`${seqFile}:${i + 1}: ${msg}: ${line}`);
    };
    if (line.startsWith('## ')) {
      cur = { name: line.slice(3).trim(), policy: null, baseline: [], pushes: [] };
      seqs.push(cur);
      return;
    }
    if (!cur) fail('line before the first "## name"');
    const sp = line.indexOf(' ');
    const kw = sp < 0 ? line : line.slice(0, sp);
    const rest = sp < 0 ? '' : line.slice(sp + 1);
    const tagLabel = (s) => {
      const c = s.lastIndexOf(':');
      if (c <= 0 || c === s.length - 1) fail(`bad tag:label "${s}"`);
      return { tag: s.slice(0, c), label: s.slice(c + 1) };
    };
    if (kw === 'policy') {
      const m = rest.match(/^prerelease=(true|false) only_newer=(true|false) range=(.*)$/);
      if (!m) fail('bad policy line');
      cur.policy = { prerelease: m[1] === 'true', onlyNewer: m[2] === 'true', range: m[3].trim() };
    } else if (kw === 'baseline') {
      cur.baseline = rest.split(/\s+/).filter(Boolean).map(tagLabel);
    } else if (kw === 'push') {
      cur.pushes.push(tagLabel(rest.trim()));
    } else {
      fail('unknown keyword');
    }
  });
  for (const s of seqs) {
    if (!s.policy) throw new Error(`sequence ${s.name}: no policy line`);
  }
  return seqs;
}

function fluxArgs(policy) {
  const a = ['-range', policy.range];
  if (policy.prerelease) a.push('-prerelease');
  return a;
}

function fluxSelect(policy, tags) {
  const out = execFileSync(fluxBin, ['select', ...fluxArgs(policy)], {
    input: tags.join('\n') + '\n',
    encoding: 'utf8',
  });
  return out.trim();
}

function fluxConstraint(policy) {
  return execFileSync(fluxBin, ['constraint', ...fluxArgs(policy)], { encoding: 'utf8' }).trim();
}

const seqs = parseSequences(readFileSync(seqFile, 'utf8'));
const rows = [];
rows.push(
  [
    'seq', 'name', 'step', 'tag', 'flux_selected_after_step', 'renovate_update_from_previous_highest',
    'digest', 'flux_selected_digest', 'renovate_current', 'note',
  ].join('\t'),
);
for (const s of seqs) {
  const p = s.policy;
  rows.push(
    `# ${s.name}: prerelease=${p.prerelease} only_newer=${p.onlyNewer} range=${p.range || '(empty)'}` +
      ` -> flux constraint "${fluxConstraint(p)}"; renovate: docker versioning, default config`,
  );
  const tags = new Map(); // tag -> digest label, insertion-ordered
  for (const { tag, label } of s.baseline) tags.set(tag, label);
  const sel0 = fluxSelect(p, [...tags.keys()]);
  rows.push(['seq', s.name, 0, '(baseline)', sel0 || '(none)', '-', '-', sel0 ? tags.get(sel0) : '-', '-', 'baseline: ' + s.baseline.map((x) => `${x.tag}:${x.label}`).join(' ')].join('\t'));
  s.pushes.forEach(({ tag, label }, i) => {
    const known = [...tags.keys()];
    const prevLabel = tags.get(tag);
    const current = highestCompatible(known, tag);
    const update = proposeUpdate(current, tag);
    const notes = [];
    if (prevLabel !== undefined) {
      notes.push(
        prevLabel === label
          ? `re-push of ${tag} with the same digest ${label}: no change`
          : `re-push of ${tag} (${prevLabel}->${label}): Renovate sees only a digest change ('digest' update if the digest is pinned)`,
      );
    }
    const sameDigest = known.filter((k) => k !== tag && tags.get(k) === label);
    tags.set(tag, label);
    const sel = fluxSelect(p, [...tags.keys()]);
    if (sameDigest.length) notes.push(`same image as ${sameDigest.join(',')}`);
    rows.push(
      [
        'seq', s.name, i + 1, tag, sel || '(none)', update, label,
        sel ? tags.get(sel) : '-', current ?? '-', notes.join('; ') || '-',
      ].join('\t'),
    );
  });
}
process.stdout.write(rows.join('\n') + '\n');
