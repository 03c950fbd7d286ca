// Turns a results JSON (bench/results/latest.json) into docs/benchmarks.md and one SVG bar
// chart per suite (docs/charts/<suite>.svg). Pure functions plus one writer; run this file
// directly to regenerate the docs from the JSON without running the benchmarks again:
//   node bench/lib/report.mjs [bench/results/latest.json]
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

export function fmt(value, unit = '') {
  if (!Number.isFinite(value)) return 'n/a';
  const abs = Math.abs(value);
  let s;
  if (unit === '%') s = abs >= 10 ? value.toFixed(0) : abs >= 1 ? value.toFixed(1) : value.toFixed(2);
  else if (abs >= 100_000) s = `${(value / 1000).toFixed(0)}k`;
  else if (abs >= 10_000) s = `${(value / 1000).toFixed(1)}k`;
  else if (abs >= 100) s = value.toFixed(0);
  else if (abs >= 10) s = value.toFixed(1);
  else s = value.toFixed(2);
  return unit === '%' ? `${s}%` : s;
}

const fmtRatio = (r, unit = 'x') => (Number.isFinite(r) ? `${r >= 10 ? r.toFixed(1) : r.toFixed(2)}${unit}` : 'n/a');
/** A ratio's goal: `>= 10x` by default, `<= 2x` for a ceiling (`atMost`). */
export const fmtTarget = (r) => (r.target == null ? '-' : `${r.atMost ? '<=' : '>='} ${+r.target.toFixed(2)}${r.unit ?? 'x'}`);

const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

/** An SVG document of `W` x `H` on a white background holding `parts`. */
function svgDocument(W, H, parts) {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="Helvetica, Arial, sans-serif" fill="#222">`,
    `<rect x="0" y="0" width="${W}" height="${H}" fill="#ffffff"/>`,
    ...parts,
    `</svg>`,
    '',
  ].join('\n');
}

// One colour per peer, stable across charts (colour-blind-friendly Okabe-Ito palette).
const PALETTE = ['#0072B2', '#E69F00', '#009E73', '#CC79A7', '#56B4E9', '#D55E00', '#F0E442', '#000000'];

function groupsOf(figures) {
  const groups = new Map();
  for (const f of figures) {
    if (!groups.has(f.group)) groups.set(f.group, []);
    groups.get(f.group).push(f);
  }
  return groups;
}

/**
 * A horizontal bar chart: one panel per group (workload), one bar per peer. Each panel has
 * its own linear scale from zero (figures of different workloads differ by 100x), stated
 * in the chart. The bar is the median; the thin line spans min..max over the rounds.
 */
export function renderChart(suite) {
  const W = 760;
  const labelW = 230;
  const barX = labelW + 10;
  const barW = 380;
  const barH = 18;
  const gap = 6;
  const flat = flatFigures(suite);
  const groups = groupsOf(flat);
  const peers = [...new Set(flat.map((f) => f.peer))];
  const colour = (peer) => PALETTE[peers.indexOf(peer) % PALETTE.length];
  let y = 0;
  const parts = [];
  parts.push(`<text x="12" y="24" font-size="16" font-weight="bold">${esc(suite.title ?? suite.name)}</text>`);
  parts.push(
    `<text x="12" y="42" font-size="11" fill="#555">bar: median of ${suite.rounds ?? '?'} interleaved rounds; line: min..max; each panel scaled to its own maximum</text>`,
  );
  y = 58;
  for (const [group, figs] of groups) {
    const unit = figs[0].unit;
    const max = Math.max(...figs.map((f) => (Number.isFinite(f.max) ? f.max : f.median)).filter(Number.isFinite), 0) || 1;
    parts.push(`<text x="12" y="${y + 14}" font-size="13" font-weight="bold">${esc(group)}</text>`);
    parts.push(`<text x="${W - 12}" y="${y + 14}" font-size="11" fill="#555" text-anchor="end">${esc(unit)}${figs[0].higherIsBetter === false ? ' (lower is better)' : ''}</text>`);
    y += 22;
    for (const f of figs) {
      const scale = (v) => (Number.isFinite(v) ? (Math.max(0, v) / max) * barW : 0);
      parts.push(`<text x="${labelW}" y="${y + barH - 5}" font-size="12" text-anchor="end">${esc(f.peer)}</text>`);
      parts.push(`<rect x="${barX}" y="${y}" width="${barW}" height="${barH}" fill="#f1f1f1"/>`);
      const w = scale(f.median);
      parts.push(`<rect x="${barX}" y="${y}" width="${w.toFixed(1)}" height="${barH}" fill="${colour(f.peer)}"><title>${esc(`${f.peer}: median ${fmt(f.median, unit)} ${unit}, min ${fmt(f.min, unit)}, max ${fmt(f.max, unit)}`)}</title></rect>`);
      if (Number.isFinite(f.min) && Number.isFinite(f.max)) {
        const x1 = barX + scale(f.min);
        const x2 = barX + scale(f.max);
        const cy = y + barH / 2;
        parts.push(`<line x1="${x1.toFixed(1)}" y1="${cy}" x2="${x2.toFixed(1)}" y2="${cy}" stroke="#222" stroke-width="1.5"/>`);
        parts.push(`<line x1="${x1.toFixed(1)}" y1="${cy - 4}" x2="${x1.toFixed(1)}" y2="${cy + 4}" stroke="#222" stroke-width="1.5"/>`);
        parts.push(`<line x1="${x2.toFixed(1)}" y1="${cy - 4}" x2="${x2.toFixed(1)}" y2="${cy + 4}" stroke="#222" stroke-width="1.5"/>`);
      }
      const label = Number.isFinite(f.median) ? fmt(f.median, unit) : 'skipped';
      parts.push(`<text x="${barX + barW + 8}" y="${y + barH - 5}" font-size="12">${esc(label)}</text>`);
      y += barH + gap;
    }
    y += 12;
  }
  const H = y + 4;
  return svgDocument(W, H, parts);
}

/** An x value of a curve: a count as written (1,024), else as is. */
const fmtX = (x) => (Number.isInteger(x) ? x.toLocaleString('en-US') : String(x));

/** The figures of a suite shown as bars and in its flat table (those not on a curve). */
const flatFigures = (suite) => suite.figures.filter((f) => !f.curve);

/** The points of one curve of a suite: Map<peer, [{ x, median, min, max }]> sorted by x. */
function curveSeries(suite, curveId) {
  const series = new Map();
  for (const f of suite.figures) {
    if (f.curve?.id !== curveId) continue;
    if (!series.has(f.peer)) series.set(f.peer, []);
    series.get(f.peer).push({ x: f.curve.x, median: f.median, min: f.min, max: f.max, rounds: f.rounds ?? f.samples?.length });
  }
  for (const points of series.values()) points.sort((a, b) => a.x - b.x);
  return series;
}

/**
 * A line chart of one curve: x (log scale when the points span 10x or more), y from zero, or
 * on a log scale when the medians span more than 20x; one line per peer, a dot per median and
 * a whisker for min..max.
 */
export function renderCurveChart(suite, curve) {
  const W = 820;
  const H = 380;
  const left = 70;
  const right = 250;
  const top = 56;
  const bottom = 50;
  const series = curveSeries(suite, curve.id);
  const peers = [...series.keys()];
  const points = [...series.values()].flat().filter((p) => Number.isFinite(p.median));
  const xs = [...new Set(points.map((p) => p.x))].sort((a, b) => a - b);
  const ys = points.flatMap((p) => [p.median, p.min, p.max]).filter((v) => Number.isFinite(v) && v > 0);
  const logX = xs.length > 1 && xs[0] > 0 && xs[xs.length - 1] / xs[0] >= 10;
  const yMin = Math.min(...ys);
  const yMax = Math.max(...ys, 1e-9);
  const logY = yMin > 0 && yMax / yMin > 20;
  const plotW = W - left - right;
  const plotH = H - top - bottom;
  const fx = (x) => {
    if (xs.length < 2) return left + plotW / 2;
    const [a, b, v] = logX ? [Math.log(xs[0]), Math.log(xs[xs.length - 1]), Math.log(x)] : [xs[0], xs[xs.length - 1], x];
    return left + ((v - a) / (b - a)) * plotW;
  };
  const lo = logY ? Math.log10(yMin) : 0;
  const hi = logY ? Math.log10(yMax) : yMax;
  const fy = (y) => top + plotH - (((logY ? Math.log10(Math.max(y, yMin)) : y) - lo) / (hi - lo || 1)) * plotH;
  const unit = suite.figures.find((f) => f.curve?.id === curve.id)?.unit ?? '';
  const parts = [];
  parts.push(`<text x="12" y="24" font-size="16" font-weight="bold">${esc(curve.title)}</text>`);
  parts.push(
    `<text x="12" y="42" font-size="11" fill="#555">dot: median of ${roundsLabel(points, suite)} interleaved rounds; whisker: min..max; ${esc(unit)}${curve.higherIsBetter === false ? ' (lower is better)' : ''}${logY ? ', log scale' : ''}</text>`,
  );
  parts.push(`<line x1="${left}" y1="${top + plotH}" x2="${left + plotW}" y2="${top + plotH}" stroke="#222"/>`);
  parts.push(`<line x1="${left}" y1="${top}" x2="${left}" y2="${top + plotH}" stroke="#222"/>`);
  for (const x of xs) {
    parts.push(`<line x1="${fx(x).toFixed(1)}" y1="${top + plotH}" x2="${fx(x).toFixed(1)}" y2="${top + plotH + 4}" stroke="#222"/>`);
    parts.push(`<text x="${fx(x).toFixed(1)}" y="${top + plotH + 18}" font-size="11" text-anchor="middle">${esc(fmtX(x))}</text>`);
  }
  parts.push(`<text x="${left + plotW / 2}" y="${H - 10}" font-size="12" text-anchor="middle">${esc(curve.x)}${logX ? ' (log scale)' : ''}</text>`);
  const ticks = logY
    ? Array.from({ length: Math.floor(hi) - Math.ceil(lo) + 1 }, (_, i) => 10 ** (Math.ceil(lo) + i))
    : Array.from({ length: 5 }, (_, i) => (yMax * i) / 4);
  for (const t of ticks) {
    parts.push(`<line x1="${left - 4}" y1="${fy(t).toFixed(1)}" x2="${left + plotW}" y2="${fy(t).toFixed(1)}" stroke="#e4e4e4"/>`);
    const label = logY && t >= 1000 ? `${fmtX(t / 1000)}k` : fmt(t);
    parts.push(`<text x="${left - 6}" y="${(fy(t) + 4).toFixed(1)}" font-size="11" text-anchor="end">${esc(label)}</text>`);
  }
  peers.forEach((peer, i) => {
    const colour = PALETTE[i % PALETTE.length];
    const pts = series.get(peer).filter((p) => Number.isFinite(p.median));
    if (pts.length > 1) parts.push(`<polyline fill="none" stroke="${colour}" stroke-width="2" points="${pts.map((p) => `${fx(p.x).toFixed(1)},${fy(p.median).toFixed(1)}`).join(' ')}"/>`);
    for (const p of pts) {
      if (Number.isFinite(p.min) && Number.isFinite(p.max)) {
        parts.push(`<line x1="${fx(p.x).toFixed(1)}" y1="${fy(p.min).toFixed(1)}" x2="${fx(p.x).toFixed(1)}" y2="${fy(p.max).toFixed(1)}" stroke="${colour}" stroke-width="1"/>`);
      }
      parts.push(`<circle cx="${fx(p.x).toFixed(1)}" cy="${fy(p.median).toFixed(1)}" r="3.5" fill="${colour}"><title>${esc(`${peer}, ${curve.x} ${p.x}: ${fmt(p.median, unit)} ${unit}`)}</title></circle>`);
    }
    const ly = top + 10 + i * 20;
    parts.push(`<rect x="${left + plotW + 16}" y="${ly - 9}" width="12" height="12" fill="${colour}"/>`);
    parts.push(`<text x="${left + plotW + 34}" y="${ly + 1}" font-size="12">${esc(peer)}</text>`);
  });
  return svgDocument(W, H, parts);
}

/** How many rounds the points of a curve had: "5", or "3 to 5". */
function roundsLabel(points, suite) {
  const counts = points.map((p) => p.rounds).filter(Number.isFinite);
  if (counts.length === 0) return String(suite.rounds ?? '?');
  const lo = Math.min(...counts);
  const hi = Math.max(...counts);
  return lo === hi ? String(lo) : `${lo} to ${hi}`;
}

/** The markdown table of one curve: a row per x, a column per peer (median, min..max). */
function curveTable(suite, curve) {
  const series = curveSeries(suite, curve.id);
  const peers = [...series.keys()];
  const xs = [...new Set([...series.values()].flat().map((p) => p.x))].sort((a, b) => a - b);
  const unit = suite.figures.find((f) => f.curve?.id === curve.id)?.unit ?? '';
  const out = [`| ${curve.x} | ${peers.map((p) => `${esc(p)} (${unit})`).join(' | ')} |`, `|---:|${peers.map(() => '---:').join('|')}|`];
  for (const x of xs) {
    const cells = peers.map((peer) => {
      const p = series.get(peer).find((q) => q.x === x);
      return p && Number.isFinite(p.median) ? `**${fmt(p.median, unit)}** (${fmt(p.min, unit)}..${fmt(p.max, unit)})` : '-';
    });
    out.push(`| ${fmtX(x)} | ${cells.join(' | ')} |`);
  }
  return out;
}

/** Analysis written by hand for a suite (bench/notes/<suite>.md), kept across regenerations. */
function suiteNotes(name) {
  try {
    return readFileSync(join(root, 'bench', 'notes', `${name}.md`), 'utf8').trim();
  } catch {
    return '';
  }
}

function machineLine(m) {
  const load = m.loadAverageAtStart ? `; load average (1/5/15 min) ${m.loadAverageAtStart.join(' / ')} at start, ${(m.loadAverageAtEnd ?? []).join(' / ')} at end` : '';
  return `${m.cpu} (${m.cores} cores), ${m.memoryGB} GB RAM, ${m.os}, Node ${m.node}${load}`;
}

/** The markdown page for a results object. */
export function renderMarkdown(results) {
  const out = [];
  out.push('# Benchmarks');
  out.push('');
  out.push('<!-- Generated by `pnpm bench` (bench/run.mjs) from bench/results/latest.json. Do not edit by hand. -->');
  out.push('');
  const separately = results.suites.filter((s) => s.run).map((s) => `[${s.name}](#${anchor(s.title ?? s.name)})`);
  const except = separately.length ? ` (except the suite${separately.length > 1 ? 's' : ''} ${separately.join(', ')}, measured separately, as said there)` : '';
  out.push(`Every figure on this page${except} was measured by \`${results.command}\` on ${results.date.slice(0, 10)} (${results.date}), at commit \`${results.commit}\`, on this machine:`);
  out.push('');
  out.push(`- ${machineLine(results.machine)}`);
  for (const [name, v] of Object.entries(results.versions ?? {})) out.push(`- ${name} ${v}`);
  out.push('');
  out.push(
    'Method: the peers of a suite run in the same process, in interleaved rounds (each round runs every peer once, ' +
      'in an order rotated per round, after a discarded warm-up round), so slow drifts of a shared machine hit every peer alike. ' +
      'Tables give the median over the rounds with the interquartile range (p25..p75) and the extremes; ratios are medians of ' +
      'per-round ratios. The raw data, every round included, is in [bench/results/latest.json](../bench/results/latest.json). ' +
      'Absolute numbers on a shared 2-core machine are noisy; compare ratios.',
  );
  out.push('');
  const minutes = Math.max(1, Math.round(results.durationMs / 60000));
  out.push('To reproduce: `pnpm install && pnpm bench` (about ' + minutes + (minutes === 1 ? ' minute' : ' minutes') + ' here). `node bench/run.mjs --quick` runs every suite with tiny iteration counts to prove it still works; it writes bench/results/quick.json and leaves this page alone.');
  out.push('');
  out.push('## Summary');
  out.push('');
  out.push('| suite | ratio | measured (median, min..max) | target | met |');
  out.push('|---|---|---|---|---|');
  for (const s of results.suites) {
    if (s.error) {
      out.push(`| ${s.name} | - | crashed | ${esc(s.target ?? '')} | no |`);
      continue;
    }
    for (const r of s.ratios ?? []) {
      const met = r.note ? r.note : r.target == null ? '-' : r.met ? 'yes' : 'no';
      out.push(`| [${s.name}](#${anchor(s.title ?? s.name)}) | ${r.label} | ${fmtRatio(r.median, r.unit)} (${fmtRatio(r.min, r.unit)}..${fmtRatio(r.max, r.unit)}) | ${fmtTarget(r)} | ${met} |`);
    }
  }
  out.push('');
  for (const s of results.suites) {
    out.push(`## ${s.title ?? s.name}`);
    out.push('');
    out.push(`Suite \`${s.name}\` ([bench/suites/${s.name}.mjs](../bench/suites/${s.name}.mjs)).`);
    out.push('');
    if (s.run) {
      // Re-measured on its own (bench/run.mjs --suite ... --merge), not in the run named at the top.
      out.push(`Measured separately by \`${s.run.command}\` on ${s.run.date.slice(0, 10)} (${s.run.date}), at commit \`${s.run.commit}\`: ${machineLine(s.run.machine)}.`);
      out.push('');
    }
    out.push(`- **Workload:** ${s.workload}`);
    out.push(`- **Ratio it cares about:** ${s.ratio}`);
    out.push(`- **Target:** ${s.target}`);
    out.push('');
    if (s.error) {
      out.push('This suite crashed in the run that produced this page:');
      out.push('');
      out.push('```');
      out.push(s.error);
      out.push('```');
      out.push('');
      continue;
    }
    if (s.ratios?.length) {
      out.push('| ratio | median | min..max | target | met |');
      out.push('|---|---|---|---|---|');
      for (const r of s.ratios) {
        out.push(`| ${r.label} | **${fmtRatio(r.median, r.unit)}** | ${fmtRatio(r.min, r.unit)}..${fmtRatio(r.max, r.unit)} | ${fmtTarget(r)} | ${r.note ? r.note : r.target == null ? '-' : r.met ? 'yes' : 'no'} |`);
      }
      out.push('');
    }
    if (flatFigures(s).length) {
      out.push('| workload | peer | median | p25..p75 | min..max | unit |');
      out.push('|---|---|---:|---:|---:|---|');
      for (const f of flatFigures(s)) {
        if (!Number.isFinite(f.median)) {
          out.push(`| ${f.group} | ${f.peer} | skipped | | | ${f.unit} |`);
          continue;
        }
        out.push(`| ${f.group} | ${f.peer} | **${fmt(f.median, f.unit)}** | ${fmt(f.p25, f.unit)}..${fmt(f.p75, f.unit)} | ${fmt(f.min, f.unit)}..${fmt(f.max, f.unit)} | ${f.unit} |`);
      }
      out.push('');
      out.push(`![${s.name} chart](charts/${s.name}.svg)`);
      out.push('');
    }
    for (const c of s.curves ?? []) {
      out.push(`### ${c.title}`);
      out.push('');
      if (c.about) {
        out.push(c.about);
        out.push('');
      }
      out.push(...curveTable(s, c));
      out.push('');
      out.push(`![${c.title}](charts/${s.name}-${c.id}.svg)`);
      out.push('');
    }
    const handNotes = suiteNotes(s.name);
    if (handNotes) {
      out.push(`<!-- From bench/notes/${s.name}.md (written by hand; kept when this page is regenerated). -->`);
      out.push('');
      out.push(handNotes);
      out.push('');
    }
    const notes = [...(s.notes ?? []), ...(s.checks ?? []).map((c) => `Correctness check: ${c.ok ? 'passed' : 'FAILED'}: ${c.message}`)];
    if (notes.length) {
      for (const n of notes) out.push(`- ${n}`);
      out.push('');
    }
  }
  return out.join('\n');
}

function anchor(title) {
  return title
    .toLowerCase()
    .replace(/[^a-z0-9 _-]/g, '')
    .trim()
    .replace(/ /g, '-');
}

/**
 * Puts the suites of a partial run (`node bench/run.mjs --suite ...`) into a full results
 * object, replacing suites of the same name; each keeps its own run (command, date, commit,
 * machine), which the page states under the suite's heading.
 */
export function mergeSuites(latest, partial) {
  const run = { command: partial.command, date: partial.date, commit: partial.commit, machine: partial.machine, versions: partial.versions };
  const suites = [...latest.suites];
  for (const s of partial.suites) {
    const merged = { ...s, run };
    const i = suites.findIndex((x) => x.name === s.name);
    if (i >= 0) suites[i] = merged;
    else suites.push(merged);
  }
  return { ...latest, suites };
}

/** Renders everything; returns { markdown, charts: { name: svg } } (also used by --quick as a smoke test). */
export function render(results) {
  const charts = {};
  for (const s of results.suites) {
    if (s.error) continue;
    if (flatFigures(s).length) charts[s.name] = renderChart(s);
    for (const c of s.curves ?? []) charts[`${s.name}-${c.id}`] = renderCurveChart(s, c);
  }
  return { markdown: renderMarkdown(results), charts };
}

/** Writes docs/benchmarks.md and docs/charts/*.svg. */
export function writeDocs(results) {
  const { markdown, charts } = render(results);
  mkdirSync(join(root, 'docs', 'charts'), { recursive: true });
  for (const [name, svg] of Object.entries(charts)) writeFileSync(join(root, 'docs', 'charts', `${name}.svg`), svg);
  writeFileSync(join(root, 'docs', 'benchmarks.md'), markdown);
  return [join('docs', 'benchmarks.md'), ...Object.keys(charts).map((n) => join('docs', 'charts', `${n}.svg`))];
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  // node bench/lib/report.mjs [results.json]          rewrites the docs from a results file
  // node bench/lib/report.mjs --merge partial.json    merges a partial run into latest.json first
  const latestFile = join(root, 'bench', 'results', 'latest.json');
  let results;
  if (process.argv[2] === '--merge') {
    const partial = JSON.parse(readFileSync(resolve(process.argv[3] ?? join(root, 'bench', 'results', 'partial.json')), 'utf8'));
    results = mergeSuites(JSON.parse(readFileSync(latestFile, 'utf8')), partial);
    writeFileSync(latestFile, JSON.stringify(results, null, 2) + '\n');
  } else {
    results = JSON.parse(readFileSync(resolve(process.argv[2] ?? latestFile), 'utf8'));
  }
  const written = writeDocs(results);
  console.log(`wrote ${written.join(', ')}`);
}
