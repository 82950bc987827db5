// The fmnist page: draw / drop / pick an image or click a real test image; every change is sent to
// POST /v1/predict, and the page shows the 28x28 image the model saw and all class probabilities.
// Plain JS, no build step, no outside network.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const pad = $("pad");
  const ctx = pad.getContext("2d");
  const state = {
    classes: [],
    coverage: null,     // how often a prediction's set holds the true class (calibrated models)
    drawing: false,
    dirty: false,       // the pad holds something worth predicting
    last: null,         // last pointer position while drawing
    seq: 0,             // request sequence number: stale answers are dropped
    shown: 0,
    inFlight: false,
    pending: null,      // body waiting for the request in flight to finish
    timer: 0,
    truth: null,        // true label of the clicked test image, if any
  };
  const DEBOUNCE_MS = 120;

  // ---- drawing pad --------------------------------------------------------------------------

  function resetPad() {
    const dpr = Math.max(1, window.devicePixelRatio || 1);
    const size = Math.round(pad.clientWidth * dpr) || 280;
    pad.width = size;
    pad.height = size;
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, size, size);
    state.dirty = false;
  }

  function point(e) {
    const r = pad.getBoundingClientRect();
    return { x: (e.clientX - r.left) * (pad.width / r.width), y: (e.clientY - r.top) * (pad.height / r.height) };
  }

  function brushWidth() {
    return Number($("brush").value) * (pad.width / 280);
  }

  function stroke(from, to) {
    ctx.strokeStyle = "#fff";
    ctx.fillStyle = "#fff";
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.lineWidth = brushWidth();
    ctx.beginPath();
    if (from.x === to.x && from.y === to.y) {
      ctx.arc(to.x, to.y, ctx.lineWidth / 2, 0, Math.PI * 2);
      ctx.fill();
    } else {
      ctx.moveTo(from.x, from.y);
      ctx.lineTo(to.x, to.y);
      ctx.stroke();
    }
  }

  function startedDrawing() {
    $("pad-hint").classList.add("gone");
    if ($("source").textContent !== "Your drawing") {
      // drawing over a test image or an upload makes it your own picture
      state.truth = null;
      setSource("Your drawing");
      document.querySelectorAll(".sample.active").forEach((el) => el.classList.remove("active"));
    }
  }

  pad.addEventListener("pointerdown", (e) => {
    if (e.button !== 0 && e.pointerType === "mouse") return;
    e.preventDefault();
    pad.setPointerCapture(e.pointerId);
    state.drawing = true;
    state.last = point(e);
    startedDrawing();
    stroke(state.last, state.last);
    state.dirty = true;
    schedule();
  });
  pad.addEventListener("pointermove", (e) => {
    if (!state.drawing) return;
    const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [e];
    for (const ev of events.length ? events : [e]) {
      const p = point(ev);
      stroke(state.last, p);
      state.last = p;
    }
    schedule();
  });
  const stop = () => {
    if (!state.drawing) return;
    state.drawing = false;
    predictPad();  // the final shape, at once
  };
  pad.addEventListener("pointerup", stop);
  pad.addEventListener("pointercancel", stop);

  $("clear").addEventListener("click", () => {
    resetPad();
    $("pad-hint").classList.remove("gone");
    setSource("Draw below");
    state.truth = null;
    clearResult();
  });

  // ---- requests -----------------------------------------------------------------------------

  function schedule() {
    clearTimeout(state.timer);
    state.timer = setTimeout(predictPad, DEBOUNCE_MS);
  }

  function predictPad() {
    clearTimeout(state.timer);
    if (!state.dirty) return;
    const body = JSON.stringify({ images: [pad.toDataURL("image/png")] });
    send({ body, headers: { "Content-Type": "application/json" } });
  }

  // A server started with an API key answers 401 without it: ask once, keep it for this tab.
  async function api(url, opts = {}) {
    const withKey = () => {
      const key = sessionStorage.getItem("fmnist-api-key");
      const headers = { ...(opts.headers || {}), ...(key ? { Authorization: `Bearer ${key}` } : {}) };
      return fetch(url, { ...opts, headers });
    };
    let res = await withKey();
    if (res.status === 401) {
      const key = window.prompt("This server needs an API key:");
      if (key) {
        sessionStorage.setItem("fmnist-api-key", key.trim());
        res = await withKey();
      }
    }
    return res;
  }

  // One request at a time; while one is out, only the newest next body is kept.
  function send(req) {
    if (state.inFlight) {
      state.pending = req;
      return;
    }
    state.inFlight = true;
    const seq = ++state.seq;
    const t0 = performance.now();
    api("/v1/predict", { method: "POST", ...req })
      .then(async (res) => {
        const data = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
        if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
        if (seq > state.shown) {
          state.shown = seq;
          render(data.predictions[0], data.latency_ms, performance.now() - t0);
        }
      })
      .catch((err) => toast(err.message))
      .finally(() => {
        state.inFlight = false;
        if (state.pending) {
          const next = state.pending;
          state.pending = null;
          send(next);
        }
      });
  }

  function predictFile(file) {
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) {
      toast(`${file.name} is not an image.`);
      return;
    }
    state.truth = null;
    document.querySelectorAll(".sample.active").forEach((el) => el.classList.remove("active"));
    setSource(file.name || "pasted image");
    const form = new FormData();
    form.append("file", file, file.name || "image.png");
    send({ body: form });
    showOnPad(URL.createObjectURL(file));
  }

  // Show an image on the pad (contain-fit on black) so that drawing can continue over it.
  function showOnPad(src, pixelated = false) {
    const img = new Image();
    img.onload = () => {
      resetPad();
      const s = Math.min(pad.width / img.width, pad.height / img.height);
      const w = img.width * s;
      const h = img.height * s;
      // small images (a 28x28 test image) are shown as crisp pixels, photos smoothly
      ctx.imageSmoothingEnabled = !(pixelated || Math.max(img.width, img.height) <= 64);
      ctx.drawImage(img, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
      ctx.imageSmoothingEnabled = true;
      state.dirty = true;
      $("pad-hint").classList.add("gone");
      if (src.startsWith("blob:")) URL.revokeObjectURL(src);
    };
    img.src = src;
  }

  // ---- results ------------------------------------------------------------------------------

  function buildBars(classes) {
    const list = $("probs");
    list.textContent = "";
    for (const name of classes) {
      const li = document.createElement("li");
      li.className = "prob";
      li.dataset.class = name;
      li.dataset.p = "0";
      li.innerHTML = '<span class="name"></span><span class="track"><span class="bar"></span></span><span class="pct">–</span>';
      li.querySelector(".name").textContent = name;
      li.querySelector(".name").title = name;
      list.appendChild(li);
    }
  }

  function pct(p) {
    return p >= 0.995 ? "100%" : p < 0.0005 ? "0%" : `${(p * 100).toFixed(p < 0.1 ? 1 : 0)}%`;
  }

  function render(pred, latency, roundTrip) {
    const seen = $("seen");
    seen.src = pred.input;
    seen.hidden = false;
    $("seen-empty").hidden = true;
    $("pred-label").textContent = pred.label;
    $("pred-prob").textContent = `${(pred.probability * 100).toFixed(1)}% sure`;
    // calibrated models only: "not recognised" when the image is unlike every class, and the
    // set of likely classes when it holds more than the top one
    const ood = $("pred-ood");
    ood.hidden = pred.recognised !== false;
    ood.textContent = `This does not look like any of the ${state.classes.length} classes`;
    const set = $("pred-set");
    const members = pred.set || [];
    set.hidden = members.length < 2;
    const level = state.coverage ? ` (${Math.round(state.coverage * 100)}% of the time)` : "";
    set.textContent = `One of: ${members.join(" or ")}${level}`;
    for (const li of $("probs").children) {
      const p = pred.probabilities[li.dataset.class] ?? 0;
      li.dataset.p = String(p);
      li.querySelector(".bar").style.width = `${Math.max(p * 100, p > 0.001 ? 1 : 0)}%`;
      li.querySelector(".pct").textContent = pct(p);
      li.classList.toggle("top", li.dataset.class === pred.label);
      li.classList.toggle("truth-row", state.truth !== null && li.dataset.class === state.truth);
    }
    const truth = $("truth");
    if (state.truth !== null) {
      const right = state.truth === pred.label;
      truth.hidden = false;
      truth.className = `truth ${right ? "right" : "wrong"}`;
      truth.textContent = right ? "✓ correct" : `✗ actually ${state.truth}`;
    } else {
      truth.hidden = true;
    }
    $("latency").textContent = `model ${latency.model.toFixed(1)} ms · round trip ${roundTrip.toFixed(0)} ms`;
  }

  function clearResult() {
    $("seen").hidden = true;
    $("seen-empty").hidden = false;
    $("pred-label").textContent = "—";
    $("pred-prob").textContent = "";
    $("pred-ood").hidden = true;
    $("pred-set").hidden = true;
    $("truth").hidden = true;
    $("latency").textContent = "";
    for (const li of $("probs").children) {
      li.dataset.p = "0";
      li.querySelector(".bar").style.width = "0";
      li.querySelector(".pct").textContent = "–";
      li.classList.remove("top", "truth-row");
    }
  }

  function setSource(text) {
    $("source").textContent = text;
    $("source").title = text;
  }

  let toastTimer = 0;
  function toast(message) {
    const el = $("toast");
    el.textContent = message;
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => (el.hidden = true), 5000);
  }

  // ---- upload: pick, drop, paste ------------------------------------------------------------

  $("file").addEventListener("change", (e) => {
    predictFile(e.target.files[0]);
    e.target.value = "";
  });
  const zone = $("drop-zone");
  let depth = 0;
  zone.addEventListener("dragenter", (e) => { e.preventDefault(); depth++; zone.classList.add("dragging"); });
  zone.addEventListener("dragleave", () => { if (--depth <= 0) { depth = 0; zone.classList.remove("dragging"); } });
  zone.addEventListener("dragover", (e) => e.preventDefault());
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    depth = 0;
    zone.classList.remove("dragging");
    predictFile(e.dataTransfer.files[0]);
  });
  // a file dropped next to the zone must not navigate away from the page
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  window.addEventListener("paste", (e) => {
    const item = [...(e.clipboardData?.items || [])].find((i) => i.type.startsWith("image/"));
    if (item) predictFile(item.getAsFile());
  });

  // ---- strip of real test images ------------------------------------------------------------

  async function loadSamples(seed) {
    const strip = $("strip");
    try {
      const res = await api(`/v1/samples?n=12&seed=${seed}`);
      const data = await res.json();
      strip.textContent = "";
      if (!data.samples || data.samples.length === 0) {
        strip.innerHTML = '<div class="strip-empty"></div>';
        strip.firstChild.textContent = data.error || "No test images available.";
        $("shuffle").hidden = true;
        return [];
      }
      $("strip-note").textContent = `· ${data.dataset || ""} test set, click one`;
      for (const s of data.samples) {
        const b = document.createElement("button");
        b.type = "button";
        b.className = "sample";
        b.dataset.label = s.label;
        b.title = `Test image #${s.index}: ${s.label}`;
        b.innerHTML = "<img alt=''><span></span>";
        b.querySelector("img").src = s.image;
        b.querySelector("img").alt = s.label;
        b.querySelector("span").textContent = s.label;
        b.addEventListener("click", () => pickSample(b, s));
        strip.appendChild(b);
      }
      return data.samples;
    } catch (err) {
      strip.textContent = "";
      return [];
    }
  }

  function pickSample(button, s) {
    document.querySelectorAll(".sample.active").forEach((el) => el.classList.remove("active"));
    button.classList.add("active");
    state.truth = s.label;
    setSource(`Test image #${s.index} · ${s.label}`);
    showOnPad(s.image, true);
    send({ body: JSON.stringify({ arrays: [s.pixels] }), headers: { "Content-Type": "application/json" } });
  }

  let seed = 0;
  $("shuffle").addEventListener("click", () => loadSamples(++seed));

  // ---- start --------------------------------------------------------------------------------

  async function start() {
    resetPad();
    try {
      const res = await api("/v1/model");
      const info = await res.json();
      state.classes = info.classes || [];
      state.coverage = info.trust ? info.trust.coverage : null;
      buildBars(state.classes);
      const acc = info.metrics && info.metrics.test_accuracy;
      const params = info.parameters ? ` · ${(info.parameters / 1e6).toFixed(2)}M params` : "";
      $("model-name").textContent =
        `${info.model}${typeof acc === "number" ? ` · ${(acc * 100).toFixed(1)}% test accuracy` : ""}${params}`;
      $("status-dot").classList.add("ok");
    } catch (err) {
      $("model-name").textContent = "server not reachable";
      $("status-dot").classList.add("err");
    }
    const samples = await loadSamples(seed);
    // Start with a real example on screen, so the page explains itself.
    const first = document.querySelector(".sample");
    if (first && samples.length) pickSample(first, samples[0]);
  }

  window.addEventListener("resize", () => {
    // resizing clears a canvas: keep what was drawn
    const copy = document.createElement("canvas");
    copy.width = pad.width;
    copy.height = pad.height;
    copy.getContext("2d").drawImage(pad, 0, 0);
    const dirty = state.dirty;
    resetPad();
    ctx.drawImage(copy, 0, 0, pad.width, pad.height);
    state.dirty = dirty;
  });

  start();
})();
