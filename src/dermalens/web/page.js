// dermalens in the browser: the exported model runs here (ONNX Runtime Web, WebAssembly); the photo never
// leaves the device. Loaded from a static host, or from disk (file://), where fetch() cannot read the
// model: the same bytes then come from offline/*.js, plain scripts a file:// page may load.
"use strict";

(function () {
  const record = JSON.parse(document.getElementById("record").textContent);
  const P = window.DermalensPreprocess;
  const $ = (id) => document.getElementById(id);
  const classes = record.classes;                   // [{code, name}], in the model's output order
  const started = performance.now();
  let session = null;
  let generation = 0;                               // ignores results for an image that was replaced meanwhile
  let previewUrl = "";

  function showError(message) {
    $("error").textContent = message;
    $("error").hidden = !message;
  }

  function percent(p) {
    return (100 * p).toFixed(p >= 0.995 || p < 0.0005 ? 0 : 1) + "%";
  }

  function describeModel() {
    const model = record.model;
    $("model-name").textContent = model.name;
    $("model-version").textContent = "dermalens " + model.version + (model.epoch != null ? ", epoch " + model.epoch : "");
    $("model-checkpoint").textContent = model.checkpoint || "model.onnx";
    $("model-engine").textContent = "this browser: ONNX Runtime Web " + record.runtime.version + " (WebAssembly)";
    const pre = record.preprocessing;
    let input = pre.image_size + " \u00d7 " + pre.image_size + " px, " + pre.geometry.replace("_", " ");
    if (record.tta.views.length > 1) input += ", flip TTA";
    if (record.temperature !== 1) input += ", temperature " + record.temperature.toFixed(2);
    $("model-input").textContent = input;
    $("model-weights").textContent = model.weights_source || "unknown";
    const metrics = Object.entries(model.val_metrics || {});
    $("no-metrics").hidden = metrics.length > 0;
    $("metrics").hidden = metrics.length === 0;
    for (const [key, value] of metrics) {
      const row = document.createElement("tr");
      const name = document.createElement("th");
      name.textContent = key.replaceAll("_", " ");
      const number = document.createElement("td");
      number.textContent = Number(value).toFixed(3);
      row.append(name, number);
      $("metrics").append(row);
    }
  }

  function loadScript(src) {
    return new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = src;
      script.onload = resolve;
      script.onerror = () => reject(new Error("cannot load " + src + " (is the page's folder complete?)"));
      document.head.append(script);
    });
  }

  async function unpack(name) {
    // offline/*.js hold gzip-compressed base64 copies of the binary files (see web_export.py).
    const payloads = window.dermalensPayloads || {};
    if (!payloads[name]) throw new Error("offline copy of " + name + " is missing");
    const text = atob(payloads[name]);
    delete payloads[name];
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  async function fetchBytes(url) {
    const response = await fetch(url);
    if (!response.ok) throw new Error("cannot load " + url + ": " + response.status + " " + response.statusText);
    return new Uint8Array(await response.arrayBuffer());
  }

  async function loadModel() {
    // One thread: WebAssembly threads need a cross-origin-isolated page, which file:// and plain static hosts are not.
    ort.env.wasm.numThreads = 1;
    let model;
    if (location.protocol === "file:") {
      await loadScript("offline/runtime.js");
      await loadScript("offline/model.js");
      ort.env.wasm.wasmBinary = await unpack(record.runtime.wasm);
      const glue = await unpack(record.runtime.glue);
      ort.env.wasm.wasmPaths = { mjs: URL.createObjectURL(new Blob([glue], { type: "text/javascript" })) };
      model = await unpack(record.model_file);
    } else {
      ort.env.wasm.wasmPaths = new URL("ort/", location.href).href;
      model = await fetchBytes(record.model_file);
    }
    return ort.InferenceSession.create(model, { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
  }

  const BACKGROUND = 128;   // data/readers/images.py ALPHA_BACKGROUND: transparency is shown as mid-grey

  function onGrey(value, alpha) {
    // Pillow's alpha_composite over an opaque background, in its integer arithmetic (7 fraction bits).
    const sum = value * alpha * 128 + BACKGROUND * (255 - alpha) * 128 + 0x80 * 128;
    return (((sum >> 8) + sum) >> 8) >> 7;
  }

  async function decode(file) {
    // Upright (EXIF orientation applied, as Pillow's exif_transpose) and without colour management, as
    // dermalens decodes files; then the RGB bytes of every pixel.
    let bitmap;
    try {
      bitmap = await createImageBitmap(file, { imageOrientation: "from-image", colorSpaceConversion: "none",
        premultiplyAlpha: "none" });
    } catch (error) {
      throw new Error("cannot decode '" + file.name + "': this browser cannot open it as an image");
    }
    const canvas = document.createElement("canvas");
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.drawImage(bitmap, 0, 0);
    bitmap.close();
    const rgba = context.getImageData(0, 0, canvas.width, canvas.height).data;
    const rgb = new Uint8Array(canvas.width * canvas.height * 3);
    for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
      const alpha = rgba[i + 3];
      for (let c = 0; c < 3; c++) {
        rgb[j + c] = alpha === 255 ? rgba[i + c] : onGrey(rgba[i + c], alpha);
      }
    }
    return { rgb, height: canvas.height, width: canvas.width };
  }

  async function classify(image) {
    // preprocess_array, the flip views, their mean logits, then the softmax at the calibrated temperature.
    const size = record.preprocessing.image_size;
    const chw = P.preprocess(image.rgb, image.height, image.width, record);
    const names = record.tta.views;
    const input = new ort.Tensor("float32", P.views(chw, size, names), [names.length, 3, size, size]);
    const output = await session.run({ [record.input]: input }, [record.output]);
    const logits = P.meanLogits(output[record.output].data, names.length, classes.length);
    return { logits, probabilities: P.softmax(logits, record.temperature) };
  }

  function decide(probabilities) {
    // The model's decision rule (inference/postprocess.py DecisionRule), when its calibration record has one:
    // the argmax of log p + a per-class bias, and a melanoma flag at an operating point.
    const rule = record.decision;
    if (!rule) return null;
    // On float32 probabilities, as every other runtime decides (postprocess.py served_probabilities).
    probabilities = probabilities.map(Math.fround);
    let index = probabilities.indexOf(Math.max(...probabilities));
    if (!rule.is_raw) {
      const scores = probabilities.map((p, k) => Math.log(Math.min(1, Math.max(1e-12, p))) + rule.class_bias[k]);
      index = scores.indexOf(Math.max(...scores));
    }
    const mel = classes.findIndex((c) => c.code === "mel");
    const flag = rule.melanoma_threshold != null && mel >= 0 ? probabilities[mel] >= rule.melanoma_threshold : null;
    return { index, flag };
  }

  function caution(image) {
    // data/geometry.py: refuse images under min_side pixels a side; flag those the model sees enlarged more than
    // max_enlargement times (the shorter side of the kept region, which both geometry policies keep whole).
    const limits = record.image_limits;
    if (!limits) return null;
    const shorter = Math.min(image.width, image.height);
    if (shorter < limits.min_side) {
      throw new Error("image '" + image.name + "' is " + image.width + " x " + image.height + " pixels; a lesion needs " +
        "at least " + limits.min_side + " pixels on the shorter side");
    }
    const size = record.preprocessing.image_size;
    const factor = size / shorter;
    if (factor <= limits.max_enlargement) return null;
    const shown = (Math.floor(factor * 10 + 0.5) / 10).toFixed(1);   // geometry.py rounds halves up too
    return "low resolution: " + image.width + " x " + image.height + " px, enlarged " + shown +
      "x to the model's " + size + "-px input, far from the images it was trained and measured on; the answer " +
      "is unreliable";
  }

  function render(fileName, result) {
    const ranked = classes.map((c, k) => ({ ...c, probability: result.probabilities[k] }))
      .sort((a, b) => b.probability - a.probability)
      .slice(0, record.top_k || classes.length);
    const bars = $("bars");
    bars.replaceChildren();
    ranked.forEach((item, rank) => {
      const row = document.createElement("li");
      row.className = "bar-row" + (rank === 0 ? " top" : "");
      row.dataset.class = item.code;
      row.dataset.probability = String(item.probability);
      const label = document.createElement("span");
      label.className = "bar-label";
      const code = document.createElement("span");
      code.className = "bar-code";
      code.textContent = item.code;
      const name = document.createElement("span");
      name.className = "bar-name";
      name.textContent = item.name;
      label.append(code, name);
      const value = document.createElement("span");
      value.className = "bar-value";
      value.textContent = percent(item.probability);
      const track = document.createElement("span");
      track.className = "bar-track";
      const fill = document.createElement("span");
      fill.className = "bar-fill";
      fill.style.width = Math.max(0, Math.min(100, 100 * item.probability)).toFixed(2) + "%";
      track.append(fill);
      row.append(label, value, track);
      bars.append(row);
    });
    bars.dataset.image = fileName;                  // which upload the bars belong to
    const top = $("top-class");
    top.replaceChildren("Most probable: ");
    const strong = document.createElement("strong");
    strong.textContent = ranked[0].name + " (" + ranked[0].code + ", " + percent(ranked[0].probability) + ")";
    top.append(strong);
    const decision = decide(result.probabilities);
    $("decision").hidden = !decision;
    if (decision) {
      const rule = record.decision;
      const chosen = classes[decision.index];
      let text = "Decision rule";
      if (!rule.is_raw) text += " (" + rule.objective + ", fitted on " + rule.fitted_on + ")";
      text += ": " + chosen.name + " (" + chosen.code + ").";
      if (decision.flag !== null) {
        text += " Melanoma flag " + (decision.flag ? "RAISED" : "not raised") + ": P(mel) " +
          (decision.flag ? "\u2265 " : "< ") + rule.melanoma_threshold.toFixed(3) + ".";
      }
      $("decision").textContent = text;
      $("decision").dataset.class = chosen.code;
      $("decision").dataset.melanomaFlag = String(decision.flag);
    }
    $("caution").hidden = !result.caution;
    $("caution").textContent = result.caution ? "Caution: " + result.caution : "";
  }

  function resetResults() {
    $("bars").replaceChildren();
    delete $("bars").dataset.image;
    $("decision").hidden = true;
    $("caution").hidden = true;
    $("top-class").textContent = "Upload an image to see the model's probabilities for each class.";
    showError("");
  }

  async function analyse(file) {
    const mine = ++generation;
    resetResults();
    if (!file || !session) return;
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    $("preview").src = previewUrl;
    $("preview-caption").textContent = file.name;
    $("preview-figure").hidden = false;
    $("status").textContent = "Classifying " + file.name + " on this device ...";
    const begin = performance.now();
    try {
      const image = await decode(file);
      const imageCaution = caution({ ...image, name: file.name });
      const result = { ...(await classify(image)), caution: imageCaution };
      if (mine !== generation) return;
      $("preview-caption").textContent = file.name + " (" + image.width + " x " + image.height + " px)";
      render(file.name, result);
      const elapsed = performance.now() - begin;
      $("status").textContent = "Classified in " + elapsed.toFixed(0) + " ms, on this device.";
      if (!document.body.dataset.firstPredictionMs) {
        document.body.dataset.firstPredictionMs = (performance.now() - started).toFixed(1);
      }
    } catch (error) {
      if (mine !== generation) return;
      $("preview-figure").hidden = true;
      $("status").textContent = "";
      showError(error.message || String(error));
    }
  }

  describeModel();
  const input = $("file-input");
  const dropzone = $("dropzone");
  input.addEventListener("change", () => analyse(input.files[0]));
  for (const name of ["dragenter", "dragover"]) {
    dropzone.addEventListener(name, (event) => { event.preventDefault(); dropzone.classList.add("dragging"); });
  }
  for (const name of ["dragleave", "drop"]) {
    dropzone.addEventListener(name, (event) => { event.preventDefault(); dropzone.classList.remove("dragging"); });
  }
  dropzone.addEventListener("drop", (event) => {
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) analyse(file);
  });
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());

  loadModel().then((created) => {
    session = created;
    const seconds = (performance.now() - started) / 1000;
    document.body.dataset.modelReadyMs = (seconds * 1000).toFixed(1);
    document.body.dataset.ready = "true";
    input.disabled = false;
    $("status").textContent = "Model ready (loaded in " + seconds.toFixed(1) + " s). Choose an image.";
  }, (error) => {
    $("status").textContent = "";
    showError("the model could not be loaded: " + (error.message || String(error)));
  });
})();
