// cddfuse serve page: plain JavaScript, no build step.
"use strict";
(function () {
  const LABELS = {
    ivf: ["Infrared", "Visible"],
    mif: ["CT / PET / SPECT", "MRI"],
  };
  const $ = (id) => document.getElementById(id);
  const form = $("fuse-form");
  const button = $("fuse-button");
  const progress = $("progress");
  const errorBox = $("error");
  const slider = $("slider");
  const urls = { a: null, b: null, fused: null };
  let token = sessionStorage.getItem("cddfuse-token") || "";
  let serverTask = null;

  function setLabels(task) {
    const [a, b] = LABELS[task] || LABELS.ivf;
    $("label-a").textContent = a;
    $("label-b").textContent = b;
    $("cap-a").textContent = a;
    $("cap-b").textContent = b;
    $("img-a").alt = a + " source";
    $("img-b").alt = b + " source";
    $("compare-with").options[0].textContent = b;
    $("compare-with").options[1].textContent = a;
  }

  // The API's errors name its fields (resize=true); here they are worded for this page's controls.
  const CONTROLS = {
    task: "Task", color: "Colour", normalize: "Normalisation", resize: "Resize the second image…",
    chroma: "Colour", format: "Download (PNG)",
  };

  function sourceLabel(field) {
    if (field === "a") return $("label-a").textContent;
    if (field === "b") return $("label-b").textContent;
    return field;
  }

  function sizeText(bytes) {
    if (bytes >= 1048576) return (bytes / 1048576).toFixed(1).replace(/\.0$/, "") + " MB";
    if (bytes >= 1024) return Math.round(bytes / 1024) + " KB";
    return bytes + " bytes";
  }

  function explain(r, body) {
    const d = body.detail || {};
    switch (body.code) {
      case "size_mismatch":
        return "The two images differ in size (" + d.a + " vs " + d.b + "). Tick \u201cResize the second image " +
          "to the first when sizes differ\u201d and press Fuse again, or register the images first.";
      case "image_too_large":
        return "The " + sourceLabel(d.field) + " image is " + d.size + " pixels, more than this server accepts (" +
          Number(d.limit).toLocaleString("en") + " pixels). Choose a smaller image.";
      case "upload_too_large":
        return "The two images together are larger than this server accepts (" + sizeText(d.limit) +
          "). Choose smaller images.";
      case "upload_too_slow":
        return "The upload was too slow for this server. Check the connection and press Fuse again.";
      case "unauthorized":
        return "This server needs an access token: enter it under \u201cAccess token\u201d and press Fuse again.";
      case "busy":
        return "The server is busy with other fusions: press Fuse again in " +
          (r.headers.get("Retry-After") || "a few") + " s.";
      case "stopping":
        return "The server is stopping: press Fuse again once it is back.";
      case "wrong_task":
        return "This server runs the " + d.server + " model: choose it under \u201cTask\u201d.";
      case "bad_option":
        if (CONTROLS[d.field]) return "The server does not accept this \u201c" + CONTROLS[d.field] + "\u201d setting. " +
          "Reload the page and try again.";
        break;
      case "missing_file":
        return "Choose the " + sourceLabel(d.field) + " image first.";
      case "bad_input": {
        // "a (name.png): ..." -> "Infrared image (name.png): ..."
        const m = /^([ab]) \(/.exec(body.error || "");
        if (m) return sourceLabel(m[1]) + " image " + body.error.slice(2);
        break;
      }
      default:
        break;
    }
    return body.error || "The server answered HTTP " + r.status + ".";
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
  }

  function setBusy(busy) {
    button.disabled = busy;
    progress.hidden = !busy;
    form.setAttribute("aria-busy", busy ? "true" : "false");
  }

  function replaceUrl(key, blob) {
    if (urls[key]) URL.revokeObjectURL(urls[key]);
    urls[key] = URL.createObjectURL(blob);
    return urls[key];
  }

  function updateSlider() {
    $("compare-clip").style.width = slider.value + "%";
    slider.setAttribute("aria-valuetext", slider.value + "% fused");
  }

  function updateCompare() {
    const which = $("compare-with").value;
    $("compare-base").src = urls[which] || "";
    $("compare-top").src = urls.fused || "";
    sizeTop();
  }

  function sizeTop() {
    // the clipped result keeps the full width of the frame, so it lines up with the source below
    $("compare-top").style.width = $("compare").clientWidth + "px";
  }

  async function loadHealth() {
    try {
      const r = await fetch("/api/health");
      const h = await r.json();
      serverTask = h.task;
      const select = $("task");
      for (const opt of select.options) {
        opt.disabled = opt.value !== h.task;
        if (opt.disabled) opt.textContent += " — not loaded on this server";
      }
      select.value = h.task;
      setLabels(h.task);
      const methods = h.methods || ["cddfuse"];
      const method = $("method");
      for (const opt of method.options) {
        opt.disabled = !methods.includes(opt.value);
        if (opt.disabled) opt.textContent += " — not loaded on this server";
      }
      method.value = methods[0];
      if (h.auth) $("token-field").hidden = false;
      $("token").value = token;
    } catch (e) {
      showError("The server does not answer: " + e);
    }
  }

  async function fuse(event) {
    event.preventDefault();
    errorBox.hidden = true;
    $("img-fused").dataset.ready = "";
    const fa = $("file-a").files[0];
    const fb = $("file-b").files[0];
    if (!fa || !fb) {
      showError("Choose two images first.");
      (fa ? $("file-b") : $("file-a")).focus();
      return;
    }
    const data = new FormData();
    data.append("a", fa);
    data.append("b", fb);
    data.append("task", $("task").value);
    data.append("method", $("method").value);
    data.append("color", $("color").value);
    data.append("normalize", $("normalize").value);
    data.append("resize", $("resize").checked ? "true" : "false");
    data.append("format", "png");
    if (!$("token-field").hidden) {
      token = $("token").value;
      sessionStorage.setItem("cddfuse-token", token);
    }
    const headers = token ? { Authorization: "Bearer " + token } : {};
    setBusy(true);
    try {
      const r = await fetch("/api/fuse", { method: "POST", body: data, headers });
      if (!r.ok) {
        let body = {};
        try {
          body = await r.json();
        } catch (e) { /* not JSON */ }
        if (r.status === 401) {
          $("token-field").hidden = false;
          $("token").focus();
        }
        showError(explain(r, body));
        return;
      }
      const blob = await r.blob();
      $("img-a").src = replaceUrl("a", fa);
      $("img-b").src = replaceUrl("b", fb);
      const fusedUrl = replaceUrl("fused", blob);
      const img = $("img-fused");
      const loaded = new Promise((resolve) => { img.onload = resolve; img.onerror = resolve; });
      img.src = fusedUrl;
      const link = $("download");
      link.href = fusedUrl;
      link.download = (fa.name.replace(/\.[^.]*$/, "") || "fused") + "-fused.png";
      $("results").hidden = false;
      updateCompare();
      updateSlider();
      await loaded;
      img.dataset.ready = "true";
      sizeTop();
    } catch (e) {
      showError("The request failed: " + e);
    } finally {
      setBusy(false);
    }
  }

  $("task").addEventListener("change", () => setLabels($("task").value));
  $("compare-with").addEventListener("change", updateCompare);
  slider.addEventListener("input", updateSlider);
  window.addEventListener("resize", sizeTop);
  form.addEventListener("submit", fuse);
  ["file-a", "file-b"].forEach((id) => $(id).addEventListener("change", () => { errorBox.hidden = true; }));
  updateSlider();
  loadHealth();
})();
