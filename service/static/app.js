// Search page of the AXM person search service: description search, image search by a result,
// camera and time filters and the status bar. Plain browser JavaScript modules with no dependencies.

import { imagePath, imageUrlOf, keepObjectUrl, loadCrop, readApiKey, requestJson, storeApiKey } from "./api.js";
import { formatCount, formatLocalTime, localInputToIso, utcOffset } from "./format.js";
import { setupIngest } from "./ingest.js";
import { clearError, showError, showInputError } from "./messages.js";

// Interval between GET /ready polls while the service is not ready.
const READY_RETRY_MS = 5000;

const elements = {};
const state = {
  // Outcome of the last GET /ready: true, false, or null before the first response.
  ready: null,
  maxTextTokens: null,
  // The last description search, kept so that "Back to description results" needs no new request.
  textSearch: null,
  // The search on screen: {kind: "text", text} or {kind: "image", id}.
  current: null,
  // Responses to older requests are dropped when a newer search has started.
  searchSequence: 0,
  gridObjectUrls: [],
  queryObjectUrl: null,
  readyTimer: null,
};

async function refreshReady() {
  clearTimeout(state.readyTimer);
  try {
    const ready = await requestJson("/ready");
    // The camera list failed to load while the service was not ready, so load it now.
    if (state.ready === false) {
      refreshCameras();
    }
    state.ready = true;
    state.maxTextTokens = ready.max_text_tokens ?? null;
    elements.statusState.textContent = ready.status;
    elements.statusGallery.textContent = formatCount(ready.gallery_size, "crop");
    setIdentity(ready.model_identity, ready.dim);
    elements.statusBackend.textContent = ready.backend ?? "–";
  } catch (error) {
    state.ready = false;
    elements.statusState.textContent =
      error.status === 503 ? `not ready: ${error.detail}` : `unreachable: ${error.detail || error.message}`;
    state.readyTimer = setTimeout(refreshReady, READY_RETRY_MS);
  }
  elements.statusState.title = elements.statusState.textContent;
}

function setIdentity(identity, dim) {
  const text = identity ? `${identity}${dim ? ` (${dim}-d)` : ""}` : "–";
  elements.statusModel.textContent = text;
  elements.statusModel.title = text;
}

async function refreshCameras() {
  const list = elements.cameraList;
  const selected = new Set(selectedCameras());
  try {
    const stats = await requestJson("/gallery/stats");
    list.replaceChildren();
    if (!stats.cameras || stats.cameras.length === 0) {
      list.append(helpText("The gallery has no camera ids yet."));
      return;
    }
    for (const camera of stats.cameras) {
      list.append(cameraOption(camera, selected.has(camera.camera_id)));
    }
  } catch (error) {
    list.replaceChildren(helpText(`Cameras not loaded: ${error.detail || error.message}`));
    if (error.status === 401) {
      showError("Loading the gallery", error);
    }
  }
}

function cameraOption(camera, checked) {
  const label = document.createElement("label");
  label.className = "camera";
  const box = document.createElement("input");
  box.type = "checkbox";
  box.name = "camera";
  box.value = camera.camera_id;
  box.checked = checked;
  label.append(box, ` ${camera.camera_id} `);
  const count = document.createElement("span");
  count.className = "count";
  count.textContent = `(${camera.count})`;
  label.append(count);
  return label;
}

function helpText(text) {
  const p = document.createElement("p");
  p.className = "help";
  p.textContent = text;
  return p;
}

function selectedCameras() {
  return [...elements.cameraList.querySelectorAll('input[name="camera"]:checked')].map((box) => box.value);
}

function describeTimeZone() {
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";
  elements.timezoneHelp.textContent =
    `Times are in this browser's time zone, ${zone} (UTC${utcOffset(new Date())} now).`;
}

// Build the `filters` object of the search API. Throws an Error with a readable message.
function readFilters() {
  const filters = {};
  const cameras = selectedCameras();
  if (cameras.length > 0) {
    filters.camera_ids = cameras;
  }

  const from = localInputToIso(elements.capturedFrom.value);
  const to = localInputToIso(elements.capturedTo.value);
  if (from && to && new Date(from) > new Date(to)) {
    throw new Error(`"Captured from" (${from}) is after "Captured to" (${to}). Swap or clear them.`);
  }
  if (from) {
    filters.captured_from = from;
  }
  if (to) {
    filters.captured_to = to;
  }
  return filters;
}

function readTopK() {
  const topK = elements.topK.valueAsNumber;
  if (!Number.isInteger(topK) || topK < 1) {
    throw new Error(`Results to show must be a whole number of at least 1, not "${elements.topK.value}".`);
  }
  return topK;
}

async function searchText(text) {
  let payload;
  try {
    payload = { text, top_k: readTopK(), filters: readFilters() };
  } catch (error) {
    showInputError("Search", error.message);
    return;
  }

  const sequence = beginSearch("Searching for the description…");
  try {
    const response = await requestJson("/search", { method: "POST", json: payload });
    if (sequence !== state.searchSequence) {
      return;
    }
    state.textSearch = { text, response, settings: searchSettingsKey(payload.top_k, payload.filters) };
    state.current = { kind: "text", text };
    clearError();
    renderText(response);
  } catch (error) {
    if (sequence === state.searchSequence) {
      failSearch("Search", error);
    }
  }
}

async function searchImage(id) {
  const form = new FormData();
  try {
    form.append("id", id);
    form.append("top_k", String(readTopK()));
    form.append("filters", JSON.stringify(readFilters()));
  } catch (error) {
    showInputError("Image search", error.message);
    return;
  }

  const sequence = beginSearch(`Searching for crops like ${id}…`);
  try {
    const response = await requestJson("/search/image", { method: "POST", form });
    if (sequence !== state.searchSequence) {
      return;
    }
    state.current = { kind: "image", id };
    clearError();
    renderImage(id, response);
  } catch (error) {
    if (sequence === state.searchSequence) {
      failSearch("Image search", error);
    }
  }
}

// Top-k and filters of a search as one string, to tell whether cached results still match the form.
function searchSettingsKey(topK, filters) {
  return JSON.stringify({ topK, filters });
}

function beginSearch(message) {
  state.searchSequence += 1;
  elements.results.setAttribute("aria-busy", "true");
  elements.resultsStatus.textContent = message;
  return state.searchSequence;
}

function failSearch(action, error) {
  elements.results.setAttribute("aria-busy", "false");
  elements.resultsStatus.textContent = `${action} failed. See the message above.`;
  showError(action, error);
}

// Run the search on screen again, for instance after a filter changed.
function repeatSearch() {
  if (!state.current) {
    return;
  }
  if (state.current.kind === "text") {
    searchText(state.current.text);
  } else {
    searchImage(state.current.id);
  }
}

function renderText(response) {
  elements.resultsHeading.textContent = "Results for the description";
  elements.backToText.hidden = true;
  hideQueryImage();
  renderTruncation(response);
  renderGrid(response.results);
  elements.resultsStatus.textContent = describeResults(response, "the description");
  elements.results.setAttribute("aria-busy", "false");
}

function renderImage(id, response) {
  elements.resultsHeading.textContent = "Results for an image";
  elements.backToText.hidden = state.textSearch === null;
  elements.truncation.hidden = true;
  showQueryImage(id);
  renderGrid(response.results);
  elements.resultsStatus.textContent = describeResults(response, `image ${id}`);
  elements.results.setAttribute("aria-busy", "false");
  (elements.backToText.hidden ? elements.results : elements.backToText).focus();
}

function describeResults(response, subject) {
  const count = response.results.length;
  if (count === 0) {
    return `No crops match ${subject}. Clear the filters or add crops to the gallery.`;
  }
  const took = typeof response.took_ms === "number" ? ` in ${Math.round(response.took_ms)} ms` : "";
  return `${formatCount(count, "result")} for ${subject}${took}.`;
}

function renderTruncation(response) {
  const box = elements.truncation;
  if (!response.truncated) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  const max = state.maxTextTokens ?? "?";
  box.textContent =
    `The description was truncated: ${response.tokens_used} / ${max} tokens were used and ` +
    "the words after them were not searched. Shorten the description to search on all of it.";
  box.hidden = false;
}

function renderGrid(results) {
  for (const url of state.gridObjectUrls) {
    URL.revokeObjectURL(url);
  }
  state.gridObjectUrls = [];

  const cards = results.map((result) => resultCard(result));
  elements.grid.replaceChildren(...cards);
}

function resultCard(result) {
  const item = document.createElement("li");
  item.className = "result";
  item.dataset.id = result.id;
  item.dataset.rank = String(result.rank);
  item.dataset.camera = result.camera_id ?? "";
  item.dataset.score = String(result.score);
  item.dataset.capturedAt = result.captured_at ?? "";

  const button = document.createElement("button");
  button.type = "button";
  button.className = "card";
  button.title = `Search for crops like ${result.id}`;
  button.addEventListener("click", () => searchImage(result.id));

  const img = document.createElement("img");
  img.alt = `Crop ${result.id}`;
  img.width = result.width || 60;
  img.height = result.height || 160;
  img.decoding = "async";
  loadCrop(img, imageUrlOf(result)).then((url) => keepObjectUrl(img, url, state.gridObjectUrls));

  const rank = metaLine("rank", `#${result.rank}`);
  const score = metaLine("score", `score ${Number(result.score).toFixed(3)}`);
  const camera = metaLine("camera", `camera ${result.camera_id ?? "unknown"}`);
  const captured = capturedLine(result.captured_at);
  const id = metaLine("id", result.id);
  id.title = result.id;
  button.append(img, rank, score, camera, captured, id);
  item.append(button);
  return item;
}

function metaLine(kind, text) {
  const span = document.createElement("span");
  span.className = `meta ${kind}`;
  span.textContent = text;
  return span;
}

function capturedLine(capturedAt) {
  if (!capturedAt) {
    return metaLine("captured", "time unknown");
  }
  const time = document.createElement("time");
  time.className = "meta captured";
  time.dateTime = capturedAt;
  const date = new Date(capturedAt);
  time.textContent = Number.isNaN(date.getTime()) ? capturedAt : formatLocalTime(date);
  time.title = capturedAt;
  return time;
}

async function showQueryImage(id) {
  const box = elements.queryImage;
  if (state.queryObjectUrl) {
    URL.revokeObjectURL(state.queryObjectUrl);
    state.queryObjectUrl = null;
  }
  const img = document.createElement("img");
  img.alt = `Query crop ${id}`;
  const caption = document.createElement("span");
  caption.textContent = `Crops ranked by similarity to ${id}`;
  box.replaceChildren(img, caption);
  box.hidden = false;
  const url = await loadCrop(img, imagePath(id));
  const liveUrls = [];
  keepObjectUrl(img, url, liveUrls);
  if (liveUrls.length > 0) {
    state.queryObjectUrl = liveUrls[0];
  }
}

function currentSettingsKey() {
  try {
    return searchSettingsKey(readTopK(), readFilters());
  } catch {
    // An invalid field makes the cached results unusable as well; searchText reports the field.
    return null;
  }
}

function hideQueryImage() {
  if (state.queryObjectUrl) {
    URL.revokeObjectURL(state.queryObjectUrl);
    state.queryObjectUrl = null;
  }
  elements.queryImage.hidden = true;
  elements.queryImage.replaceChildren();
}

function backToText() {
  if (!state.textSearch) {
    return;
  }
  // Filters or top-k changed since the description search, so its cached results are stale.
  if (currentSettingsKey() !== state.textSearch.settings) {
    searchText(state.textSearch.text);
    return;
  }
  const previousId = state.current && state.current.kind === "image" ? state.current.id : null;
  state.searchSequence += 1;
  state.current = { kind: "text", text: state.textSearch.text };
  clearError();
  renderText(state.textSearch.response);

  // Return focus to the card the user left from, when it is still in the description results.
  const card = [...elements.grid.querySelectorAll("li.result")].find((li) => li.dataset.id === previousId);
  (card ? card.querySelector("button") : elements.results).focus();
}

function findElements() {
  const ids = {
    statusState: "status-state",
    statusGallery: "status-gallery",
    statusModel: "status-model",
    statusBackend: "status-backend",
    apiKeyForm: "api-key-form",
    apiKey: "api-key",
    apiKeyState: "api-key-state",
    searchForm: "search-form",
    query: "query",
    topK: "top-k",
    cameraList: "camera-list",
    capturedFrom: "captured-from",
    capturedTo: "captured-to",
    timezoneHelp: "timezone-help",
    clearFilters: "clear-filters",
    filters: "filters",
    results: "results",
    resultsHeading: "results-heading",
    backToText: "back-to-text",
    queryImage: "query-image",
    resultsStatus: "results-status",
    truncation: "truncation",
    grid: "result-grid",
  };
  for (const [name, id] of Object.entries(ids)) {
    elements[name] = document.getElementById(id);
  }
}

function bindEvents() {
  elements.apiKeyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = elements.apiKey.value.trim();
    storeApiKey(key);
    elements.apiKeyState.textContent = key ? "Key set for this tab." : "Key cleared.";
    clearError();
    refreshReady();
    refreshCameras();
  });

  elements.searchForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = elements.query.value.trim();
    if (!text) {
      elements.query.focus();
      return;
    }
    searchText(text);
  });
  // Enter submits the description, and Shift+Enter inserts a new line.
  elements.query.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      elements.searchForm.requestSubmit();
    }
  });

  elements.filters.addEventListener("change", repeatSearch);
  elements.clearFilters.addEventListener("click", () => {
    for (const box of elements.cameraList.querySelectorAll('input[name="camera"]')) {
      box.checked = false;
    }
    elements.capturedFrom.value = "";
    elements.capturedTo.value = "";
    repeatSearch();
  });

  elements.backToText.addEventListener("click", backToText);
  setupIngest(() => Promise.all([refreshReady(), refreshCameras()]));
}

function start() {
  findElements();
  elements.apiKey.value = readApiKey();
  describeTimeZone();
  bindEvents();
  refreshReady();
  refreshCameras();
}

// Module scripts run once the document is parsed, so the elements exist.
start();
