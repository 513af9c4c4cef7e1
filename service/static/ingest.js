// Adding crops to the gallery: file picker and drop zone, camera, time and id prefix, and the
// result of each file.

import { requestJson } from "./api.js";
import { formatCount, localInputToIso } from "./format.js";
import { clearError, showError, showInputError } from "./messages.js";

const elements = {};
// Called after a successful upload, so the status bar and the camera list show the new gallery.
let onGalleryChanged = async () => {};

// Find the form's elements and bind its events. `galleryChanged` returns a promise.
export function setupIngest(galleryChanged) {
  const ids = {
    form: "ingest-form",
    dropZone: "drop-zone",
    ingestFiles: "ingest-files",
    ingestSelection: "ingest-selection",
    ingestPrefix: "ingest-prefix",
    ingestCamera: "ingest-camera",
    ingestCaptured: "ingest-captured",
    ingestButton: "ingest-button",
    ingestSummary: "ingest-summary",
    ingestResults: "ingest-results",
  };
  for (const [name, id] of Object.entries(ids)) {
    elements[name] = document.getElementById(id);
  }
  onGalleryChanged = galleryChanged;

  elements.form.addEventListener("submit", ingest);
  elements.ingestFiles.addEventListener("change", describeSelection);
  setupDropZone();
}

async function ingest(event) {
  event.preventDefault();
  const files = [...elements.ingestFiles.files];
  if (files.length === 0) {
    elements.ingestSummary.textContent = "Choose or drop at least one image file first.";
    elements.ingestFiles.focus();
    return;
  }

  const form = new FormData();
  const prefix = elements.ingestPrefix.value.trim().replace(/\/+$/, "");
  for (const file of files) {
    form.append("files", file, file.name);
    if (prefix) {
      form.append("ids", `${prefix}/${stripExtension(file.name)}`);
    }
  }
  const camera = elements.ingestCamera.value.trim();
  if (camera) {
    form.append("camera_id", camera);
  }
  try {
    const capturedAt = localInputToIso(elements.ingestCaptured.value);
    if (capturedAt) {
      form.append("captured_at", capturedAt);
    }
  } catch (error) {
    showInputError("Upload", `Captured at: ${error.message}`);
    return;
  }

  elements.ingestButton.disabled = true;
  elements.ingestSummary.textContent = `Sending ${formatCount(files.length, "file")}…`;
  elements.ingestResults.replaceChildren();
  try {
    const report = await requestJson("/gallery", { method: "POST", form });
    clearError();
    renderIngest(report);
    elements.ingestFiles.value = "";
    describeSelection();
    await onGalleryChanged();
  } catch (error) {
    elements.ingestSummary.textContent = "Nothing was added. See the message above.";
    if (error.body && Array.isArray(error.body.results)) {
      renderIngest(error.body);
    }
    showError("Adding crops", error);
  } finally {
    elements.ingestButton.disabled = false;
  }
}

function stripExtension(filename) {
  const dot = filename.lastIndexOf(".");
  return dot > 0 ? filename.slice(0, dot) : filename;
}

function renderIngest(report) {
  const counts = [
    `${report.created ?? 0} created`,
    `${report.updated ?? 0} updated`,
    `${report.rejected ?? 0} rejected`,
  ];
  elements.ingestSummary.textContent = `Gallery updated: ${counts.join(", ")}.`;

  const rows = (report.results || []).map((result) => {
    const li = document.createElement("li");
    li.className = `ingest-result ${result.status}`;
    li.dataset.filename = result.filename ?? "";
    li.dataset.id = result.id ?? "";
    li.dataset.status = result.status;
    const outcome =
      result.status === "rejected" ? `rejected: ${describeRejection(result.error)}` : `${result.status} as ${result.id}`;
    li.textContent = `${result.filename ?? `file ${result.index + 1}`}: ${outcome}`;
    return li;
  });
  elements.ingestResults.replaceChildren(...rows);
}

// A rejected file carries the error body {error, detail} of the failure that stopped it.
function describeRejection(error) {
  if (!error) {
    return "no reason given";
  }
  if (typeof error === "string") {
    return error;
  }
  return error.detail ? `${error.detail} (${error.error})` : error.error;
}

function describeSelection() {
  const files = [...elements.ingestFiles.files];
  if (files.length === 0) {
    elements.ingestSelection.textContent = "";
    return;
  }
  const names = files.slice(0, 3).map((file) => file.name).join(", ");
  const more = files.length > 3 ? ` and ${files.length - 3} more` : "";
  elements.ingestSelection.textContent = `${formatCount(files.length, "file")} selected: ${names}${more}.`;
}

// Dropped files go into the file input, so the input stays the one place that contains the selection.
function setupDropZone() {
  const zone = elements.dropZone;
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const transfer = new DataTransfer();
    for (const file of event.dataTransfer.files) {
      if (file.type.startsWith("image/")) {
        transfer.items.add(file);
      }
    }
    elements.ingestFiles.files = transfer.files;
    describeSelection();
  });
}
