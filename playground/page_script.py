"""What runs in the browser: the token view's painting, the head overview's clicks, and
Enter in a slider's number box. Each is a `gr.HTML` component's `js_on_load` (Gradio
passes `element`, `props`, `trigger` and `watch`); nothing here talks to the server except
through `trigger`, which is an ordinary queued Gradio event.

The token view gets from the server one payload per (run, layer, head) (see
`playground/token_view.py`) and repaints locally on hover, click and arrow keys. Token text
is only ever set with `textContent`, never parsed as HTML.
"""

TOKEN_VIEW_HTML = """
<div class="tv">
  <div class="tv-bar">
    <span class="tv-caption">Generate some text: each token will be painted by the attention it gets.</span>
    <span class="tv-legend" title="how dark a token is for the weight it gets">
      <span class="tv-ramp"><span class="tv-mark"></span></span><span class="tv-scale"></span>
      <button type="button" class="tv-relative" aria-pressed="false"
        title="shade relative to the strongest weight shown instead of 0..1">relative</button>
    </span>
    <span class="tv-dir" role="group" aria-label="direction">
      <button type="button" data-dir="from" class="on"
        title="paint what the selected token attends to">attends to</button>
      <button type="button" data-dir="to"
        title="paint the later tokens that attend to the selected token">attended by</button>
    </span>
  </div>
  <div class="tv-text" tabindex="0"
    aria-label="tokens; click one, then use the left and right arrow keys"></div>
  <div class="tv-info">Hover a token to preview it (the selection comes back when the pointer
    leaves), click or tap to select it, ← → to move.</div>
</div>
"""

TOKEN_VIEW_JS = r"""
const text = element.querySelector('.tv-text');
const caption = element.querySelector('.tv-caption');
const info = element.querySelector('.tv-info');
const dirButtons = element.querySelectorAll('[data-dir]');
const legend = element.querySelector('.tv-legend');
const scale = element.querySelector('.tv-scale');
const mark = element.querySelector('.tv-mark');
const relativeButton = element.querySelector('.tv-relative');
let view = null;      // the payload shown
let codes = null;     // Uint8Array: a packed lower triangle (a finished run) or one row (live)
let spans = [];
let pinned = null;    // the selected token (null: the payload's own)
let hovered = null;   // the token under a mouse pointer: previewed over the selection
let direction = 'from';
let relative = false; // shade against the strongest weight shown, not the absolute 0..1
let painted = [];

const weightOf = c => (c / 255) ** 2;  // codes are round(255 * sqrt(w))
const label = t => t.replace(/ /g, '\u00b7').replace(/\n/g, '\u21b5').replace(/\t/g, '\u21e5');
const quote = p => `${p} \u201c${label(view.tokens[p])}\u201d`;
const shown = w => w >= 0.001 ? w.toFixed(3) : w > 0 ? '<0.001' : '0';
// Absolute: 0..1 through a square root, so weights of a few percent stay visible while
// near-uniform attention (0.002 each) stays pale. Relative: linear up to the darkest shown.
const shade = (w, top) => 0.85 * (relative ? w / top : Math.sqrt(w));

function showLegend(top) {
  legend.dataset.scale = relative ? 'relative' : 'absolute';
  legend.dataset.darkest = top.toFixed(5);  // for tests and automation
  mark.style.left = `${(relative ? 1 : Math.sqrt(top)) * 100}%`;  // where the darkest shown sits
  scale.textContent = relative ? `0 – ${shown(top)} (darkest shown)`
                               : `0 – 1 (√ scale) · darkest ${shown(top)}`;
}

function decode(b64) {
  const raw = atob(b64);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

function tokenSpan(t, i) {
  const s = document.createElement('span');
  s.className = 'tok' + (i >= view.n_prompt ? ' gen' : '');
  s.dataset.pos = i;
  s.textContent = t.includes('\n') ? t.replace(/\n/g, '\u21b5\n') : (t || '\u2205');
  return s;
}

// weights painted for the selected token: [[position, weight], ...]
function weightsFor(p) {
  const out = [];
  if (view.live) {
    for (let k = 0; k <= p; k++) out.push([k, weightOf(codes[k])]);
  } else if (direction === 'from') {
    const start = p * (p + 1) / 2;
    for (let k = 0; k <= p; k++) out.push([k, weightOf(codes[start + k])]);
  } else {
    for (let q = p; q < spans.length; q++) out.push([q, weightOf(codes[q * (q + 1) / 2 + p])]);
  }
  return out;
}

function paint() {
  for (const i of painted) {
    const s = spans[i];
    if (!s) continue;
    s.style.backgroundColor = '';
    s.removeAttribute('title');
    delete s.dataset.weight;
    s.classList.remove('sel', 'newest');
  }
  painted = [];
  if (!view) return;
  const p = hovered ?? pinned ?? view.selected;
  if (p == null || p >= spans.length) return;
  const weights = weightsFor(p);
  const top = Math.max(...weights.map(([, w]) => w), 1e-9);
  const row = view.live || direction === 'from';
  for (const [i, w] of weights) {  // the selected token is one of them: a row or column includes it
    const s = spans[i];
    s.style.backgroundColor = `rgba(249, 115, 22, ${shade(w, top).toFixed(3)})`;
    s.title = row ? `receives ${shown(w)} from token ${p}` : `gives ${shown(w)} to token ${p}`;
    s.dataset.weight = w.toFixed(5);  // for tests and automation
    painted.push(i);
  }
  spans[p].classList.add('sel');
  showLegend(top);
  const where = `layer ${view.layer} \u00b7 ${view.head}`;
  if (view.live) {
    const newest = spans.length - 1;
    spans[newest].classList.add('newest');
    painted.push(newest);
    caption.textContent =
      `Writing\u2026 token ${quote(newest)} was chosen from what token ${quote(p)} attends to (${where})`;
  } else {
    caption.textContent = direction === 'from'
      ? `Token ${quote(p)} attends to the tokens shaded (${where})`
      : `Tokens shaded attend to token ${quote(p)} (${where})`;
  }
  element.dataset.selected = p;
  element.dataset.pinned = pinned ?? view.selected;  // for tests: the selection a preview returns to
}

function keepInView(p) {
  const s = spans[p];
  if (!s) return;
  const top = s.offsetTop;  // .tv-text is the offset parent (position: relative)
  if (top < text.scrollTop || top + s.offsetHeight > text.scrollTop + text.clientHeight) {
    text.scrollTop = top - text.clientHeight / 2;
  }
}

function show(v) {
  if (!v || !v.tokens) {
    view = null; spans = []; text.textContent = ''; painted = []; delete legend.dataset.scale;
    return;
  }
  const sameRun = view && v.run === view.run;
  const grown = sameRun && v.tokens.length >= spans.length;
  view = v;
  if (!grown) { text.textContent = ''; spans = []; painted = []; }
  for (let i = spans.length; i < v.tokens.length; i++) {
    spans.push(text.appendChild(tokenSpan(v.tokens[i], i)));
  }
  codes = decode(v.weights);
  if (v.live || !sameRun || pinned == null || pinned >= spans.length) pinned = v.live ? null : v.selected;
  hovered = null;
  element.classList.toggle('live', !!v.live);
  element.dataset.run = v.run;  // for tests and automation: which run is shown
  paint();
  if (v.live) text.scrollTop = text.scrollHeight;
  else keepInView(pinned);
}

function position(event) {
  const s = event.target.closest('[data-pos]');
  return s ? Number(s.dataset.pos) : null;
}

function describe(p, title) {
  info.textContent = title ? `token ${quote(p)}: ${title}` : `token ${quote(p)}`;
}

// A mouse previews; a touch has no hover, so only its tap (a click) counts. The info line keeps
// the hovered token's weight under the selection, read before the preview repaints.
text.addEventListener('pointerover', e => {
  const p = position(e);
  if (p == null || !view || e.pointerType !== 'mouse') return;
  const title = spans[p].title;
  if (!view.live) { hovered = p; paint(); }
  describe(p, title);
});
text.addEventListener('pointerleave', () => { if (hovered != null) { hovered = null; paint(); } });
text.addEventListener('click', e => {
  const p = position(e);
  if (p == null || !view || view.live) return;
  pinned = p;
  hovered = null;
  paint();
  describe(p, spans[p].title);
  text.focus({preventScroll: true});
});
text.addEventListener('keydown', e => {
  if (!view || view.live || !['ArrowLeft', 'ArrowRight', 'Home', 'End'].includes(e.key)) return;
  e.preventDefault();
  const last = spans.length - 1;
  const from = pinned ?? view.selected;
  const moves = {ArrowLeft: Math.max(0, from - 1), ArrowRight: Math.min(last, from + 1), Home: 0, End: last};
  pinned = moves[e.key];
  hovered = null;
  paint();
  keepInView(pinned);
});
relativeButton.addEventListener('click', () => {
  relative = !relative;
  relativeButton.setAttribute('aria-pressed', String(relative));
  relativeButton.classList.toggle('on', relative);
  paint();
});
dirButtons.forEach(b => b.addEventListener('click', () => {
  direction = b.dataset.dir;
  dirButtons.forEach(o => o.classList.toggle('on', o === b));
  paint();
}));

watch('value', () => show(props.value));
show(props.value);
"""

# The head overview is a Plotly figure inside this component: a click on a cell reports its
# layer and head as a `pick` event (Gradio's own Plot has no click event).
# A swipe is not a click: with drag zoom off (narrow screens) Plotly reports a touch that moved as
# a click, so a pick counts only when the pointer stayed within a few pixels.
OVERVIEW_JS = r"""
let down = null, moved = false;
element.addEventListener('pointerdown', e => { down = [e.clientX, e.clientY]; moved = false; }, true);
element.addEventListener('pointermove', e => {
  if (down && Math.hypot(e.clientX - down[0], e.clientY - down[1]) > 8) moved = true;
}, true);
element.addEventListener('pointercancel', () => { moved = true; }, true);  // the browser took it: a scroll
function bind() {
  const plot = element.querySelector('.js-plotly-plot');
  if (!plot || !plot.on || plot.dataset.picks) return;
  plot.dataset.picks = '1';
  plot.on('plotly_click', d => {
    const cell = d.points && d.points[0];
    if (cell && !moved) trigger('pick', {layer: cell.y, head: cell.x});
  });
}
new MutationObserver(bind).observe(element, {childList: true, subtree: true});
bind();
"""

# A slider's number box applies its value on blur (Gradio's `release`); make Enter do the same.
ENTER_APPLIES_JS = r"""
document.addEventListener('keydown', e => {
  if (e.key === 'Enter' && e.target.matches('input[type=number]')) e.target.blur();
});
"""

# On a narrow screen a swipe over a figure scrolls its box and never zooms: every Plotly figure
# gets fixed axes and no drag mode there. Gradio draws each new value with Plotly.react, which
# brings the figure's own layout back, so this follows every draw (Plotly is window.Plotly once
# a first figure loaded it).
FIXED_FIGURES_JS = r"""
const narrow = matchMedia('(max-width: 640px)');
function fix(plot) {
  const layout = plot._fullLayout;
  if (!narrow.matches || !window.Plotly || !layout) return;
  const axes = Object.keys(layout).filter(k => /^[xy]axis\d*$/.test(k));
  if (layout.dragmode === false && axes.every(k => layout[k].fixedrange)) return;
  const update = {dragmode: false};
  for (const k of axes) update[`${k}.fixedrange`] = true;
  window.Plotly.relayout(plot, update);
}
function follow(plot) {
  if (plot.dataset.fixes || !plot.on) return;
  plot.dataset.fixes = '1';
  plot.on('plotly_afterplot', () => fix(plot));
  fix(plot);
}
new MutationObserver(() => document.querySelectorAll('.js-plotly-plot').forEach(follow))
  .observe(document.body, {childList: true, subtree: true});
"""

# From Generate until the new run's views are in, every tab but the token view (which follows
# the run live) shows the previous run: say so (page.css dims them under a note).
STALE_JS = "() => { document.body.classList.add('views-stale'); }"
FRESH_JS = "() => { document.body.classList.remove('views-stale'); }"

# "Copy link": the settings (and the seed the shown run used, when the seed box is blank) as a
# query string; the page restores them when it opens (views.form.Form.restore) and may generate.
COPY_LINK_JS = r"""
(prompt, model, temperature, top_k, top_p, max_new, seed, stop_at_end) => {
  let used = String(seed ?? '').trim();
  if (!used) {
    const m = (document.querySelector('#stats')?.textContent || '').match(/seed\s+(\d+)/);
    if (m) used = m[1];
  }
  const q = new URLSearchParams({prompt, model, temperature, top_k, top_p, max_new_tokens: max_new,
                                 seed: used, stop_at_end: stop_at_end ? '1' : '0'});
  const url = location.origin + location.pathname + '?' + q.toString();
  try { navigator.clipboard?.writeText(url).catch(() => {}); } catch (e) {}
  return url;
}
"""

# After a shared link's settings were restored: generate, as the link's owner did, when the
# server said the link may (views.form.LINK_AUTORUN_TOKENS); otherwise the page waits for a click.
REGENERATE_JS = r"""
(autorun) => {
  if (autorun) setTimeout(() => document.querySelector('#generate')?.click(), 0);
}
"""

# "Download JSON": the server puts the run together (playground/export.py) into a hidden box;
# this saves it as a file in the browser: nothing is written on the server.
DOWNLOAD_JS = r"""
(text) => {
  if (!text) return;
  const run = JSON.parse(text);
  const blob = new Blob([JSON.stringify(run, null, 1)], {type: 'application/json'});
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = `gpt2-run-${String(run.model).replace(/[^A-Za-z0-9._-]+/g, '-')}-seed${run.seed ?? 'none'}.json`;
  document.body.appendChild(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
}
"""
