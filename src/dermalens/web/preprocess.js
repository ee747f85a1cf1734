// dermalens in the browser: an image as the model's input, the same numbers as
// dermalens.data.preprocess.preprocess_array (geometry policy, OpenCV's resize,
// colour policy, albumentations' normalisation), flip TTA and the temperature softmax.
//
// Why resize by hand: a canvas drawImage resize is bilinear (and browser
// specific), while the Python side uses OpenCV: INTER_AREA when the image
// shrinks, INTER_CUBIC when it grows (data/geometry.py). The area resize below
// follows OpenCV's algorithm step by step in float32 (Math.fround); the cubic
// and mixed-scale paths use OpenCV's fixed-point weights and the arithmetic of
// its vectorised row passes. Each gives OpenCV's bytes exactly (OpenCV's own
// code, as data/geometry.py runs it); tests/test_web_preprocess.py checks them.
//
// Plain script: a global `DermalensPreprocess` in a page, module.exports in node.
"use strict";

(function (root) {
  const fround = Math.fround;
  const CENTER_SQUARE = "center_square";
  const SQUASH = "squash";
  const COEF_SCALE = 2048;            // OpenCV's INTER_RESIZE_COEF_SCALE (11 bits)
  const FIXED_UNIT = fround(1 / (COEF_SCALE * COEF_SCALE));   // two rounds of 11-bit coefficients

  function roundHalfEven(x) {         // cvRound / saturate_cast: round half to even
    const floor = Math.floor(x);
    const diff = x - floor;
    if (diff > 0.5 || (diff === 0.5 && floor % 2 !== 0)) return floor + 1;
    return floor;
  }

  function toByte(x) {
    return Math.min(255, Math.max(0, x));
  }

  function cropBox(height, width, policy) {
    // (top, left, cropHeight, cropWidth) of the region the policy keeps (data/geometry.py crop_box).
    if (policy !== CENTER_SQUARE && policy !== SQUASH) {
      throw new Error("unknown geometry policy '" + policy + "'; use center_square or squash");
    }
    if (policy === SQUASH || height === width) return [0, 0, height, width];
    const side = Math.min(height, width);
    return [Math.floor((height - side) / 2), Math.floor((width - side) / 2), side, side];
  }

  function crop(rgb, width, box) {
    const [top, left, h, w] = box;
    const out = new Uint8Array(h * w * 3);
    for (let y = 0; y < h; y++) {
      const start = ((top + y) * width + left) * 3;
      out.set(rgb.subarray(start, start + w * 3), y * w * 3);
    }
    return out;
  }

  // ---------------------------------------------------------------- INTER_AREA, shrinking both ways

  function areaTable(ssize, dsize) {
    // OpenCV's computeResizeAreaTab: which source pixels (and how much of each) make one output pixel.
    const scale = 1 / (dsize / ssize);
    const entries = [];
    for (let d = 0; d < dsize; d++) {
      const fs1 = d * scale;
      const fs2 = fs1 + scale;
      const cell = Math.min(scale, ssize - fs1);
      let s2 = Math.min(Math.floor(fs2), ssize - 1);
      const s1 = Math.min(Math.ceil(fs1), s2);
      if (s1 - fs1 > 1e-3) entries.push([d, s1 - 1, fround((s1 - fs1) / cell)]);
      for (let s = s1; s < s2; s++) entries.push([d, s, fround(1 / cell)]);
      if (fs2 - s2 > 1e-3) entries.push([d, s2, fround(Math.min(Math.min(fs2 - s2, 1), cell) / cell)]);
    }
    return entries;
  }

  function resizeAreaFast(src, sh, sw, dh, dw, sy, sx) {
    // Whole-number scales: OpenCV's block average in integers, rounded half up.
    const out = new Uint8Array(dh * dw * 3);
    const area = sx * sy;
    const half = Math.floor(area / 2);
    for (let y = 0; y < dh; y++) {
      for (let x = 0; x < dw; x++) {
        for (let c = 0; c < 3; c++) {
          let sum = 0;
          for (let j = 0; j < sy; j++) {
            const row = (y * sy + j) * sw;
            for (let i = 0; i < sx; i++) sum += src[(row + x * sx + i) * 3 + c];
          }
          out[(y * dw + x) * 3 + c] = Math.floor((sum + half) / area);
        }
      }
    }
    return out;
  }

  function resizeArea(src, sh, sw, dh, dw) {
    // OpenCV's ResizeArea_Invoker: a horizontal pass per source row, summed into output rows, all in float32.
    const xtab = areaTable(sw, dw);
    const ytab = areaTable(sh, dh);
    const out = new Uint8Array(dh * dw * 3);
    const buf = new Float32Array(dw * 3);
    const sum = new Float32Array(dw * 3);
    let previous = -1;
    const flush = (dy) => {
      for (let i = 0; i < dw * 3; i++) out[dy * dw * 3 + i] = toByte(roundHalfEven(sum[i]));
    };
    for (const [dy, sy, beta] of ytab) {
      buf.fill(0);
      const row = sy * sw * 3;
      for (const [dx, sx, alpha] of xtab) {
        for (let c = 0; c < 3; c++) {
          buf[dx * 3 + c] = fround(buf[dx * 3 + c] + fround(src[row + sx * 3 + c] * alpha));
        }
      }
      if (dy !== previous) {
        if (previous >= 0) flush(previous);
        for (let i = 0; i < dw * 3; i++) sum[i] = fround(beta * buf[i]);
        previous = dy;
      } else {
        for (let i = 0; i < dw * 3; i++) sum[i] = fround(sum[i] + fround(beta * buf[i]));
      }
    }
    flush(previous);
    return out;
  }

  // ---------------------------------------------------------------- INTER_CUBIC, and INTER_AREA that grows one way

  function cubicCoefficients(x) {
    // OpenCV's interpolateCubic (A = -0.75), in float32.
    const A = fround(-0.75);
    x = fround(x);
    const x1 = fround(x + 1);
    const c0 = fround(fround(fround(fround(fround(fround(A * x1) - fround(5 * A)) * x1) + fround(8 * A)) * x1) - fround(4 * A));
    const c1 = fround(fround(fround(fround(fround(fround(A + 2) * x) - fround(A + 3)) * x) * x) + 1);
    const y = fround(1 - x);
    const c2 = fround(fround(fround(fround(fround(fround(A + 2) * y) - fround(A + 3)) * y) * y) + 1);
    const c3 = fround(fround(fround(1 - c0) - c1) - c2);
    return [c0, c1, c2, c3];
  }

  function kernelTable(ssize, dsize, mode) {
    // Per output position: the clamped source offsets and the 11-bit fixed-point weights (OpenCV's resize()).
    const scale = 1 / (dsize / ssize);
    const inverse = dsize / ssize;
    const offsets = [];
    const weights = [];
    for (let d = 0; d < dsize; d++) {
      let first;
      let coefficients;
      if (mode === "cubic") {
        let f = fround((d + 0.5) * scale - 0.5);
        const s = Math.floor(f);
        f = fround(f - s);
        coefficients = cubicCoefficients(f);
        first = s - 1;
      } else {                         // INTER_AREA when one side grows: linear weights of the covered share
        const s = Math.floor(d * scale);
        let f = fround((d + 1) - (s + 1) * inverse);
        f = f <= 0 ? 0 : fround(f - Math.floor(f));
        coefficients = [fround(1 - f), f];
        first = s;
      }
      offsets.push(coefficients.map((_, k) => Math.min(Math.max(first + k, 0), ssize - 1)));
      weights.push(coefficients.map((c) => roundHalfEven(fround(c * COEF_SCALE))));
    }
    return [offsets, weights];
  }

  function resizeKernel(src, sh, sw, dh, dw, mode) {
    const [xofs, xw] = kernelTable(sw, dw, mode);
    const [yofs, yw] = kernelTable(sh, dh, mode);
    const rows = new Map();           // source row -> its horizontal pass (integers)
    const horizontal = (sy) => {
      if (!rows.has(sy)) {
        const line = new Float64Array(dw * 3);
        const base = sy * sw * 3;
        for (let x = 0; x < dw; x++) {
          for (let c = 0; c < 3; c++) {
            let acc = 0;
            for (let k = 0; k < xofs[x].length; k++) acc += src[base + xofs[x][k] * 3 + c] * xw[x][k];
            line[x * 3 + c] = acc;
          }
        }
        rows.set(sy, line);
      }
      return rows.get(sy);
    };
    const out = new Uint8Array(dh * dw * 3);
    const betaFloat = yw.map((weights) => weights.map((b) => fround(b * FIXED_UNIT)));
    for (let y = 0; y < dh; y++) {
      const lines = yofs[y].map(horizontal);
      const beta = yw[y];
      for (let i = 0; i < dw * 3; i++) {
        let value;
        if (mode === "cubic") {
          // OpenCV's vectorised cubic rows (VResizeCubicVec_32s8u): each weight as a float32 fraction,
          // products and sums in float32 from the last row to the first, rounded half to even.
          const w = betaFloat[y];
          let acc = fround(lines[3][i] * w[3]);
          for (let k = 2; k >= 0; k--) acc = fround(fround(lines[k][i] * w[k]) + acc);
          value = roundHalfEven(acc);
        } else {
          // OpenCV's vectorised linear rows (VResizeLinearVec_32s8u): 16-bit high products, then a 2-bit round.
          const t0 = Math.floor(beta[0] * Math.floor(lines[0][i] / 16) / 65536);
          const t1 = Math.floor(beta[1] * Math.floor(lines[1][i] / 16) / 65536);
          value = Math.floor((t0 + t1 + 2) / 4);
        }
        out[y * dw * 3 + i] = toByte(value);
      }
    }
    return out;
  }

  function resize(src, sh, sw, size) {
    // data/geometry.resize_image: INTER_AREA when the pixel count shrinks, INTER_CUBIC when it grows.
    if (sh === size && sw === size) return Uint8Array.from(src);
    if (size * size <= sh * sw) {
      if (sh >= size && sw >= size) {
        const sy = 1 / (size / sh);
        const sx = 1 / (size / sw);
        if (Number.isInteger(sx) && Number.isInteger(sy)) return resizeAreaFast(src, sh, sw, size, size, sy, sx);
        return resizeArea(src, sh, sw, size, size);
      }
      return resizeKernel(src, sh, sw, size, size, "area");
    }
    return resizeKernel(src, sh, sw, size, size, "cubic");
  }

  function fitToSquare(rgb, height, width, size, policy) {
    // data/geometry.fit_to_square: RGB bytes (height x width x 3) -> size x size x 3, by the policy.
    if (rgb.length !== height * width * 3) throw new Error("expected " + height * width * 3 + " RGB bytes");
    if (height === size && width === size) return Uint8Array.from(rgb);
    const box = cropBox(height, width, policy);
    const cropped = box[2] === height && box[3] === width ? rgb : crop(rgb, width, box);
    return resize(cropped, box[2], box[3], size);
  }

  function shadesOfGray(rgb) {
    // data/color.shades_of_gray (p = 6): divide out the illuminant estimated as each channel's 6-norm mean.
    // numpy takes the means in float32 and the gains in float64; here the means are float64, then rounded
    // to float32, so a pixel may land one level apart where its product sits on a rounding boundary.
    const power = 6;
    const count = rgb.length / 3;
    const illuminant = [0, 1, 2].map((c) => {
      let sum = 0;
      for (let i = c; i < rgb.length; i += 3) sum += rgb[i] ** power;
      return fround((sum / count) ** (1 / power));
    });
    const norm = fround(Math.sqrt(illuminant.reduce((a, x) => fround(a + fround(x * x)), 0)));
    if (norm <= 0) return Uint8Array.from(rgb);
    const gains = illuminant.map((x) => norm / (x * Math.sqrt(3) + 1e-6));
    const out = new Uint8Array(rgb.length);
    for (let i = 0; i < rgb.length; i++) out[i] = roundHalfEven(Math.min(255, Math.max(0, rgb[i] * gains[i % 3])));
    return out;
  }

  function applyColorPolicy(rgb, policy) {
    if (policy === "shades_of_gray") return shadesOfGray(rgb);
    if (policy === "none" || policy === undefined) return rgb;
    throw new Error("unknown colour policy '" + policy + "'; use none or shades_of_gray");
  }

  function normalise(square, size, tables) {
    // HWC bytes -> CHW float32 through the per-level tables of data/preprocess.normalisation_tables.
    const plane = size * size;
    const out = new Float32Array(3 * plane);
    for (let i = 0; i < plane; i++) {
      for (let c = 0; c < 3; c++) out[c * plane + i] = tables[c][square[i * 3 + c]];
    }
    return out;
  }

  function preprocess(rgb, height, width, record) {
    const pre = record.preprocessing;
    const square = fitToSquare(rgb, height, width, pre.image_size, pre.geometry);
    return normalise(applyColorPolicy(square, pre.color), pre.image_size, pre.normalisation_tables);
  }

  const VIEWS = {
    // (y, x) -> the source pixel of each view, as OnnxPredictor.logits flips the CHW array.
    identity: (y, x) => [y, x],
    flip_width: (y, x, n) => [y, n - 1 - x],
    flip_height: (y, x, n) => [n - 1 - y, x],
    flip_both: (y, x, n) => [n - 1 - y, n - 1 - x],
  };

  function views(chw, size, names) {
    // The model's batch: one CHW copy per TTA view, in the record's order.
    const plane = size * size;
    const batch = new Float32Array(names.length * 3 * plane);
    names.forEach((name, v) => {
      const at = VIEWS[name];
      if (!at) throw new Error("unknown TTA view '" + name + "'");
      for (let c = 0; c < 3; c++) {
        for (let y = 0; y < size; y++) {
          for (let x = 0; x < size; x++) {
            const [sy, sx] = at(y, x, size);
            batch[v * 3 * plane + c * plane + y * size + x] = chw[c * plane + sy * size + sx];
          }
        }
      }
    });
    return batch;
  }

  function meanLogits(logits, nViews, nClasses) {
    const mean = new Float64Array(nClasses);
    for (let v = 0; v < nViews; v++) {
      for (let k = 0; k < nClasses; k++) mean[k] += logits[v * nClasses + k];
    }
    return Array.from(mean, (x) => x / nViews);
  }

  function softmax(logits, temperature) {
    const scaled = logits.map((x) => x / temperature);
    const top = Math.max(...scaled);
    const exp = scaled.map((x) => Math.exp(x - top));
    const total = exp.reduce((a, b) => a + b, 0);
    return exp.map((x) => x / total);
  }

  const api = { cropBox, fitToSquare, resize, applyColorPolicy, normalise, preprocess, views, meanLogits, softmax, VIEWS };
  if (typeof module !== "undefined" && module.exports) module.exports = api;
  else root.DermalensPreprocess = api;
})(typeof self !== "undefined" ? self : this);
