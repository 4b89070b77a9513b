"""What runs in the browser: the token view's painting, the head overview's clicks, and
Enter in a slider's number box. Each is a `gr.HTML` component's `js_on_load` (Gradio
passes `element`, `props`, `trigger` and `watch`); nothing here talks to the server except
through `trigger`, which is an ordinary queued Gradio event.

The token view gets from the server one payload per (run, layer, head) (see
`playground/token_view.py`) and repaints locally on hover, click and arrow keys. Token text
is only ever set with `textContent`, never parsed as HTML.
"""
from pathlib import Path

TOKEN_VIEW_HTML = """
<div class="tv">
  <div class="tv-bar">
    <span class="tv-caption">Generate some text: each token will be painted by the attention it gets.</span>
    <span class="tv-legend" title="how dark a token is for the weight it gets">
      <span class="tv-ramp"><span class="tv-mark"></span></span><span class="tv-scale"></span>
      <button type="button" class="tv-relative" aria-pressed="false"
        title="shade relative to the strongest weight shown instead of 0..1">relative</button>
    </span>
    <span class="tv-mode" role="group" aria-label="shading">
      <button type="button" data-mode="attention" class="on"
        title="shade by the selected head's attention">attention</button>
      <button type="button" data-mode="attribution"
        title="shade by input saliency (Explain tab): blue pushes towards the explained token, red away">attribution</button>
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
const modeButtons = element.querySelectorAll('[data-mode]');
let mode = 'attention'; // or 'attribution': the payload's saliency (from the Explain tab)
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
    delete s.dataset.score;
    s.classList.remove('sel', 'newest');
  }
  painted = [];
  if (!view) return;
  if (mode === 'attribution' && view.saliency) { paintSaliency(); return; }
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

// Saliency: each token up to the explained position by its input x gradient, on a diverging
// scale (blue pushes the metric up, red down) relative to the largest magnitude.
function paintSaliency() {
  const sal = view.saliency;
  const top = Math.max(...sal.scores.map(Math.abs), 1e-9);
  sal.scores.forEach((v, i) => {
    const s = spans[i];
    if (!s) return;
    const alpha = (0.85 * Math.sqrt(Math.abs(v) / top)).toFixed(3);
    s.style.backgroundColor = v >= 0 ? `rgba(37, 99, 235, ${alpha})` : `rgba(220, 38, 38, ${alpha})`;
    s.title = `saliency ${v >= 0 ? '+' : ''}${v.toFixed(4)} for ${sal.target} over ${sal.contrast}`;
    s.dataset.score = v.toFixed(6);  // for tests and automation
    painted.push(i);
  });
  if (spans[sal.token]) { spans[sal.token].classList.add('sel'); painted.push(sal.token); }
  legend.dataset.scale = 'diverging';
  legend.dataset.darkest = top.toFixed(5);
  scale.textContent = `\u2212${top.toPrecision(2)} \u2026 +${top.toPrecision(2)} (red lowers, blue raises)`;
  caption.textContent = `Saliency for token ${quote(sal.token)}: ${sal.target} rather than ${sal.contrast} ` +
    '(input \u00d7 gradient of the logit difference, each earlier token)';
  element.dataset.selected = sal.token;
}

function setMode(m) {
  mode = view && view.saliency ? m : 'attention';
  modeButtons.forEach(o => o.classList.toggle('on', o.dataset.mode === mode));
  element.classList.toggle('attribution', mode === 'attribution');
  paint();
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
  const fresh = !!v.saliency;  // an Explain result; a new layer or head of the same run keeps the last one
  if (!fresh && sameRun && !v.live && view.saliency) v = {...v, saliency: view.saliency};
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
  element.classList.toggle('has-saliency', !!v.saliency);
  mode = fresh ? 'attribution' : 'attention';
  modeButtons.forEach(o => o.classList.toggle('on', o.dataset.mode === mode));
  element.classList.toggle('attribution', mode === 'attribution');
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
modeButtons.forEach(b => b.addEventListener('click', () => setMode(b.dataset.mode)));
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

# Figures wider than their panel (the heatmap, the logit-lens grid, Compare's rows) scroll
# sideways in their box (page.css). While they do, their row labels and the y axis title stay
# at the box's left edge over a patch of the page's background, the x axis title stays under
# the part in view, and a line above the figure says that it scrolls and which columns are in
# view. Plotly draws a figure anew for each value (Gradio mounts a new one), so this follows
# every draw and every scroll.
SCROLLING_FIGURES = ("#attention-heatmap", "#lens-grid", "#compare-rows")
FIGURE_SCROLL_JS = r"""
const scrolling = '__SCROLLING__';
function background(el) {
  for (; el; el = el.parentElement) {
    const c = getComputedStyle(el).backgroundColor;
    if (c && c !== 'transparent' && !/rgba\(.*,\s*0\)$/.test(c)) return c;
  }
  return 'white';
}
function columnsInView(plot, box) {
  const xa = plot._fullLayout.xaxis, ticks = xa.tickvals || [];
  if (!xa.p2l || !ticks.length) return '';
  // the row labels cover the plot's first `_offset` pixels in view
  const lo = xa.p2l(box.scrollLeft), hi = xa.p2l(box.scrollLeft + box.clientWidth - xa._offset);
  const shown = ticks.filter(v => v >= Math.min(lo, hi) - 0.5 && v <= Math.max(lo, hi) + 0.5).length;
  return ` \u00b7 ${Math.min(shown, ticks.length)} of ${ticks.length} columns in view`;
}
function shift(el, x) {  // keeps Plotly's own transform (a new draw sets a new one)
  const own = el.getAttribute('transform') || '';
  const base = own === el.__shifted ? el.__base : own;
  el.__base = base;
  el.__shifted = x ? `${base} translate(${x},0)`.trim() : base;
  if (el.__shifted) el.setAttribute('transform', el.__shifted); else el.removeAttribute('transform');
}
function place(box) {
  const plot = box.querySelector('.js-plotly-plot');
  const layout = plot && plot._fullLayout;
  if (!layout || !layout._size) return;
  let hint = box.querySelector(':scope > .scroll-hint');
  if (!hint) {
    hint = document.createElement('div');
    hint.className = 'scroll-hint';
    box.prepend(hint);
  }
  const wide = plot.scrollWidth > box.clientWidth + 1;
  const x = wide ? box.scrollLeft : 0;
  box.classList.toggle('scrolls', wide);
  hint.hidden = !wide;
  if (wide) {
    const end = x + box.clientWidth >= plot.scrollWidth - 1;
    hint.textContent = (end ? '\u2190 scroll back for the first columns' : 'Scroll sideways for more \u2192')
      + columnsInView(plot, box);
  }
  const rows = plot.querySelector('.yaxislayer-above');
  if (rows) {
    let patch = rows.querySelector(':scope > rect.sticky-rows');
    if (!patch && wide) {
      patch = document.createElementNS('http://www.w3.org/2000/svg', 'rect');
      patch.setAttribute('class', 'sticky-rows');
      rows.prepend(patch);
    }
    if (patch) {
      patch.setAttribute('x', 0); patch.setAttribute('y', 0);
      patch.setAttribute('width', wide ? layout._size.l : 0); patch.setAttribute('height', layout.height);
      patch.style.fill = background(box);
    }
    shift(rows, x);
  }
  plot.querySelectorAll('.g-ytitle').forEach(t => shift(t, x));
  const title = plot.querySelector('.g-xtitle');
  if (title) {  // under the middle of the plot area in view
    const area = layout._size, inView = Math.min(x + box.clientWidth, area.l + area.w) - (x + area.l);
    shift(title, Math.max(0, wide ? x + inView / 2 - area.w / 2 : 0));
  }
}
function watchBox(box) {
  const plot = box.querySelector('.js-plotly-plot');
  if (!plot || !plot.on || plot.dataset.sticky) return;
  plot.dataset.sticky = '1';
  plot.on('plotly_afterplot', () => place(box));
  if (!box.dataset.sticky) {
    box.dataset.sticky = '1';
    box.addEventListener('scroll', () => place(box), {passive: true});
    new ResizeObserver(() => place(box)).observe(box);
  }
  place(box);
}
new MutationObserver(() => document.querySelectorAll(scrolling).forEach(watchBox))
  .observe(document.body, {childList: true, subtree: true});
""".replace("__SCROLLING__", ", ".join(SCROLLING_FIGURES))


def _plotly_asset() -> str:
    """The file name of Gradio's Plotly bundle (hashed per release), '' when not found."""
    import gradio

    found = sorted((Path(gradio.__file__).parent / "templates" / "frontend" / "assets").glob("PlotlyPlot-*.js"))
    return found[0].name if found else ""


# Gradio mounts a tab's components on its first visit (Tab's render_children is not read by
# Gradio 6's frontend), and its Plot component imports Plotly (a 4.4 MB module) when it draws a
# first figure: a first visit of a chart tab took seconds with a blank panel. Both happen with
# the page instead: every tab of the views is opened once, out of sight, as soon as the tabs
# exist (the panel keeps its height meanwhile, and the tab that was selected comes back), and
# Plotly is imported when the browser is idle, from the same URL Gradio's own import resolves to
# (so the module is evaluated once). Then a new run's figures are drawn into their tabs as they
# arrive, and a first visit only shows them.
def views_early_js(plotly_asset: str | None = None) -> str:
    asset = _plotly_asset() if plotly_asset is None else plotly_asset
    return r"""
// Gradio's Plot draws a new value twice: into the figure's old div (whose effect sees the new
// value first) and then into the new div that replaces it, so every figure of a run cost two
// full draws. A figure in a tab out of sight waits instead: it is drawn when the browser is
// idle, or at once when its tab is shown, whichever comes first, and only if its div is still
// in the page (with its latest value): the tab in view and the token view are not kept waiting
// by figures nobody looks at yet. A figure in view is drawn at once, as Gradio expects.
// body[data-drawing] counts the draws to come (for tests and benchmarks/page_timing.py).
function drawOnce(P) {
  if (!P || P.__drawOnce) return;
  P.__drawOnce = true;
  const react = P.react, due = new Map();
  let drawing = 0;
  const count = () => { document.body.dataset.drawing = String(due.size + drawing); };
  const shown = new ResizeObserver(entries => entries.forEach(e => { if (e.contentRect.width > 0) draw(e.target); }));
  // A figure out of sight is drawn with its tab laid out, invisible and out of the flow, as wide
  // as the tab in view: in a hidden (display: none) tab Plotly takes its default 700 px.
  const style = document.createElement('style');
  style.textContent = '#views .tabitem.offscreen-draw { display: flex !important; position: absolute !important; ' +
    'visibility: hidden !important; pointer-events: none; box-sizing: border-box; width: var(--offscreen-width); }';
  document.head.appendChild(style);
  function layOut(gd) {
    const panel = gd.closest('.tabitem');
    if (!panel || getComputedStyle(panel).display !== 'none' && !panel.classList.contains('offscreen-draw')) {
      return () => {};
    }
    const inView = [...panel.parentElement.children].find(
      p => p !== panel && p.classList.contains('tabitem') && getComputedStyle(p).display !== 'none');
    const width = (inView || panel.parentElement).getBoundingClientRect().width;
    panel.style.setProperty('--offscreen-width', `${width}px`);
    panel.dataset.offscreen = String(Number(panel.dataset.offscreen || 0) + 1);
    panel.classList.add('offscreen-draw');
    return () => {
      panel.dataset.offscreen = String(Number(panel.dataset.offscreen) - 1);
      if (panel.dataset.offscreen === '0') panel.classList.remove('offscreen-draw');
    };
  }
  const idle = window.requestIdleCallback || (f => setTimeout(f, 50));
  function draw(gd) {
    const job = due.get(gd);
    if (!job) return;
    due.delete(gd);
    shown.unobserve(gd);
    if (!gd.isConnected) { count(); job.done.forEach(d => d(gd)); return; }  // replaced meanwhile
    drawing++;
    count();
    let restore = () => {};
    Promise.resolve().then(() => { restore = layOut(gd); return react.call(P, gd, ...job.args); }).catch(() => {})
      .then(() => {
        restore();
        drawing--;
        count();
        job.done.forEach(d => d(gd));
      });
  }
  P.react = function(gd, ...args) {
    if (!(gd instanceof Element)) return react.call(this, gd, ...args);
    if (!due.has(gd) && gd.isConnected && gd.getBoundingClientRect().width > 0) {
      return react.call(this, gd, ...args);  // in view: drawn at once, as Gradio expects
    }
    const job = due.get(gd);
    if (job) { job.args = args; return new Promise(d => job.done.push(d)); }
    return new Promise(d => {
      due.set(gd, {args, done: [d]});
      count();
      setTimeout(() => {
        if (!gd.isConnected || gd.getBoundingClientRect().width > 0) { draw(gd); return; }
        shown.observe(gd);
        idle(() => draw(gd), {timeout: 1000});
      }, 0);
    });
  };
}
(async () => {
  const frame = () => new Promise(r => requestAnimationFrame(() => r()));
  const plotly = '__PLOTLY__';
  let list = null;
  for (let i = 0; i < 1200 && !(list = document.querySelector('#views [role=tablist]')); i++) await frame();
  if (list) {
    const tabs = [...list.querySelectorAll('[role=tab]')];
    const selected = tabs.find(t => t.getAttribute('aria-selected') === 'true') || tabs[0];
    const box = list.closest('.tabs');
    const panels = () => box.querySelectorAll('.tabitem').length;
    box.style.height = `${box.offsetHeight}px`;
    box.style.overflow = 'hidden';
    document.body.classList.add('views-mounting');
    for (const tab of tabs) {
      if (tab === selected || tab.getAttribute('aria-disabled') === 'true') continue;
      const before = panels();
      tab.click();
      for (let i = 0; i < 120 && panels() === before; i++) await frame();
    }
    selected?.click();
    await frame();
    box.style.height = '';
    box.style.overflow = '';
    document.body.classList.remove('views-mounting');
  }
  document.body.dataset.viewsMounted = String(list ? list.querySelectorAll('[role=tab]').length : 0);
  if (!plotly) return;
  const base = document.querySelector('script[src*="/assets/index-"]')?.src || new URL('assets/', location.href).href;
  const load = () => import(new URL(plotly, base).href)
    .then(() => { drawOnce(window.Plotly); document.body.dataset.plotlyLoaded = '1'; }, () => {});
  (window.requestIdleCallback || (f => setTimeout(f, 200)))(load, {timeout: 2000});
})();
""".replace("__PLOTLY__", asset)

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

# The Explain button explains the token selected in the token view (its pinned selection; the
# slider's own value if nothing is selected there); another token resets the contrast.
EXPLAIN_SELECTED_JS = r"""
(run, position, contrast, layer, head) => {
  const view = document.querySelector('#token-view [data-pinned]');
  const pinned = view ? Number(view.dataset.pinned) : NaN;
  if (Number.isInteger(pinned) && pinned >= 1 && pinned !== position) return [run, pinned, null, layer, head];
  return [run, position, contrast, layer, head];
}
"""
# The Explain tab's own slider picks another token: its contrast starts over (the runner-up).
EXPLAIN_POSITION_JS = "(run, position, contrast, layer, head) => [run, position, null, layer, head]"
