/* Study viewer: the radiograph on a canvas with window/level, zoom and pan, and Grad-CAM heatmaps as toggled
   overlays. Window/level works on the 8-bit display image the server sends (already VOI-windowed from DICOM).
   Mouse: drag pans, wheel zooms at the pointer, shift-drag changes window (left/right) and level (up/down).
   Keyboard (viewport focused): arrows pan, + and - zoom, 0 resets, i inverts. */
"use strict";
(function () {
  var viewport = document.getElementById("viewport");
  var pending = document.getElementById("study-pending");
  if (pending) { setTimeout(function () { location.reload(); }, parseInt(pending.dataset.reloadMs, 10) || 5000); }
  setupReveal();
  if (!viewport) { return; }

  var canvas = document.getElementById("canvas");
  var ctx = canvas.getContext("2d");
  var message = document.getElementById("viewer-message");
  var info = document.getElementById("image-info");
  var widthInput = document.getElementById("wl-width");
  var levelInput = document.getElementById("wl-level");
  var widthNumber = document.getElementById("wl-width-number");
  var levelNumber = document.getElementById("wl-level-number");
  var opacityInput = document.getElementById("overlay-opacity");
  var heatmapMessage = document.getElementById("heatmap-message");

  var state = { source: null, luminance: null, rendered: null, w: 0, h: 0, scale: 1, x: 0, y: 0, invert: false, full: false };
  var overlays = new Map();  // label -> ImageBitmap/Image

  function say(text) { message.textContent = text; message.hidden = !text; }

  function loadImage(url) {
    return radtriageFetch(url, { headers: { "Accept": "image/png" } }).then(function (response) {
      if (!response.ok) {
        return response.json().catch(function () { return {}; }).then(function (body) {
          throw new Error(body.message || "The image could not be loaded (HTTP " + response.status + ").");
        });
      }
      var size = response.headers.get("X-Image-Size");
      var downscaled = response.headers.get("X-Image-Downscaled") === "1";
      return response.blob().then(function (blob) { return createImageBitmap(blob); }).then(function (bitmap) {
        return { bitmap: bitmap, size: size, downscaled: downscaled };
      });
    });
  }

  function useImage(loaded, keepView) {
    var bitmap = loaded.bitmap;
    var ratio = state.w ? bitmap.width / state.w : 1;
    state.source = bitmap; state.w = bitmap.width; state.h = bitmap.height;
    var scratch = document.createElement("canvas");
    scratch.width = state.w; scratch.height = state.h;
    var sctx = scratch.getContext("2d", { willReadFrequently: true });
    sctx.drawImage(bitmap, 0, 0);
    var rgba = sctx.getImageData(0, 0, state.w, state.h);
    state.luminance = new Uint8ClampedArray(state.w * state.h);
    for (var i = 0, j = 0; i < state.luminance.length; i += 1, j += 4) { state.luminance[i] = rgba.data[j]; }
    state.rendered = scratch; state.renderedCtx = sctx; state.imageData = rgba;
    if (keepView) { state.scale /= ratio; } else { fit(); }
    applyWindow();
    info.textContent = "Image " + (loaded.size || (state.w + "×" + state.h)).replace("x", "×") + " pixels" +
      (loaded.downscaled ? ", shown downscaled to " + state.w + "×" + state.h + (state.full ? " (too large for the browser at full size)" : "") : ", full resolution");
    viewport.dataset.loaded = "1";
    say("");
  }

  function applyWindow() {
    widthNumber.value = widthInput.value; levelNumber.value = levelInput.value;  // sliders and numbers agree
    if (!state.luminance) { return; }
    var width = Math.max(1, +widthInput.value), level = +levelInput.value;
    var low = level - width / 2, lut = new Uint8ClampedArray(256);
    for (var v = 0; v < 256; v += 1) {
      var out = (v - low) / width * 255;
      lut[v] = state.invert ? 255 - out : out;
    }
    var data = state.imageData.data, lum = state.luminance;
    for (var i = 0, j = 0; i < lum.length; i += 1, j += 4) {
      var g = lut[lum[i]]; data[j] = g; data[j + 1] = g; data[j + 2] = g; data[j + 3] = 255;
    }
    state.renderedCtx.putImageData(state.imageData, 0, 0);
    draw();
  }

  function resize() {
    var rect = viewport.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
    canvas.width = Math.max(1, Math.round(rect.width * dpr)); canvas.height = Math.max(1, Math.round(rect.height * dpr));
    draw();
  }

  function fit() {
    var cw = canvas.width, ch = canvas.height;
    state.scale = Math.min(cw / state.w, ch / state.h);
    state.x = (cw - state.w * state.scale) / 2; state.y = (ch - state.h * state.scale) / 2;
  }

  function draw() {
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000"; ctx.fillRect(0, 0, canvas.width, canvas.height);
    if (!state.rendered) { return; }
    ctx.imageSmoothingEnabled = state.scale < 2;
    var dw = state.w * state.scale, dh = state.h * state.scale;
    ctx.drawImage(state.rendered, state.x, state.y, dw, dh);
    ctx.globalAlpha = opacityInput ? +opacityInput.value / 100 : 0.7;
    ctx.imageSmoothingEnabled = true;
    overlays.forEach(function (image) { ctx.drawImage(image, state.x, state.y, dw, dh); });
    ctx.globalAlpha = 1;
    viewport.dataset.overlays = Array.from(overlays.keys()).join(",");
  }

  function zoomAt(factor, cx, cy) {
    var next = Math.min(40, Math.max(0.05, state.scale * factor));
    factor = next / state.scale;
    state.x = cx - (cx - state.x) * factor; state.y = cy - (cy - state.y) * factor; state.scale = next;
    draw();
  }

  function centre() { return [canvas.width / 2, canvas.height / 2]; }

  // ---- pointer and keyboard
  var drag = null;
  viewport.addEventListener("pointerdown", function (e) {
    viewport.setPointerCapture(e.pointerId);
    drag = { x: e.clientX, y: e.clientY, windowing: e.shiftKey, width: +widthInput.value, level: +levelInput.value };
  });
  viewport.addEventListener("pointermove", function (e) {
    if (!drag) { return; }
    var dpr = window.devicePixelRatio || 1, dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (drag.windowing) {
      widthInput.value = Math.max(1, Math.min(255, drag.width + dx));
      levelInput.value = Math.max(0, Math.min(255, drag.level - dy));
      applyWindow();
    } else {
      state.x += dx * dpr; state.y += dy * dpr; drag.x = e.clientX; drag.y = e.clientY; draw();
    }
  });
  viewport.addEventListener("pointerup", function () { drag = null; });
  viewport.addEventListener("wheel", function (e) {
    e.preventDefault();
    var rect = canvas.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
    zoomAt(e.deltaY < 0 ? 1.15 : 1 / 1.15, (e.clientX - rect.left) * dpr, (e.clientY - rect.top) * dpr);
  }, { passive: false });
  viewport.addEventListener("keydown", function (e) {
    var step = 40 * (window.devicePixelRatio || 1), c = centre();
    var handled = true;
    switch (e.key) {
      case "ArrowLeft": state.x += step; draw(); break;
      case "ArrowRight": state.x -= step; draw(); break;
      case "ArrowUp": state.y += step; draw(); break;
      case "ArrowDown": state.y -= step; draw(); break;
      case "+": case "=": zoomAt(1.25, c[0], c[1]); break;
      case "-": zoomAt(0.8, c[0], c[1]); break;
      case "0": reset(); break;
      case "i": toggleInvert(); break;
      default: handled = false;
    }
    if (handled) { e.preventDefault(); }
  });

  function reset() { widthInput.value = 255; levelInput.value = 128; fit(); applyWindow(); }
  function toggleInvert() {
    state.invert = !state.invert;
    document.getElementById("invert").setAttribute("aria-pressed", String(state.invert));
    applyWindow();
  }

  widthInput.addEventListener("input", applyWindow);
  levelInput.addEventListener("input", applyWindow);
  function fromNumber(number, slider, low) {
    number.addEventListener("change", function () {
      var value = Math.round(+number.value);
      if (!isFinite(value)) { value = +slider.value; }
      slider.value = Math.max(low, Math.min(255, value));
      applyWindow();
    });
  }
  fromNumber(widthNumber, widthInput, 1);
  fromNumber(levelNumber, levelInput, 0);
  document.querySelectorAll(".legend-swatch[data-colour]").forEach(function (swatch) {
    swatch.style.background = "linear-gradient(90deg, transparent, " + swatch.dataset.colour + ")";
  });
  if (opacityInput) { opacityInput.addEventListener("input", draw); }
  document.getElementById("zoom-in").addEventListener("click", function () { var c = centre(); zoomAt(1.25, c[0], c[1]); });
  document.getElementById("zoom-out").addEventListener("click", function () { var c = centre(); zoomAt(0.8, c[0], c[1]); });
  document.getElementById("view-reset").addEventListener("click", reset);
  document.getElementById("invert").addEventListener("click", toggleInvert);
  var fullButton = document.getElementById("full-res");
  fullButton.addEventListener("click", function () {
    fullButton.disabled = true; fullButton.textContent = "Loading…";
    state.full = true;
    loadImage(viewport.dataset.full).then(function (loaded) {
      useImage(loaded, true);
      fullButton.textContent = "Full resolution loaded";
    }).catch(function (error) {
      if (error.signedOut) { return; }
      fullButton.disabled = false; fullButton.textContent = "Full resolution";
      info.textContent = error.message;
    });
  });

  document.querySelectorAll(".heatmap-toggle").forEach(function (box) {
    box.addEventListener("change", function () {
      var label = box.dataset.label;
      if (!box.checked) { overlays.delete(label); draw(); return; }
      heatmapMessage.textContent = "Computing the " + label + " heatmap…";
      loadImage(box.dataset.url).then(function (loaded) {
        if (box.checked) { overlays.set(label, loaded.bitmap); }
        heatmapMessage.textContent = "";
        draw();
      }).catch(function (error) {
        box.checked = false;
        if (!error.signedOut) { heatmapMessage.textContent = "No heatmap for " + label + ": " + error.message; }
      });
    });
  });

  window.addEventListener("resize", resize);
  resize();
  loadImage(viewport.dataset.image).then(function (loaded) { useImage(loaded, false); })
    .catch(function (error) { if (!error.signedOut) { say(error.message); } viewport.dataset.loaded = "error"; });

  function setupReveal() {
    var button = document.getElementById("reveal-patient");
    if (!button) { return; }
    button.addEventListener("click", function () {
      radtriageFetch(button.dataset.url, { method: "POST", headers: { "Accept": "application/json", "X-CSRF-Token": button.dataset.csrf } })
        .then(function (response) { return response.json(); })
        .then(function (body) {
          if (body.patient) { document.getElementById("patient-id").textContent = body.patient; button.hidden = true; }
        }).catch(function () {});
    });
  }
})();
