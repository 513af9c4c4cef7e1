// Counts and times as the page shows and sends them.

export function formatCount(count, noun) {
  if (typeof count !== "number") {
    return "–";
  }
  return `${count.toLocaleString()} ${noun}${count === 1 ? "" : "s"}`;
}

// Turn a datetime-local value (local wall time, no zone) into ISO 8601 with this browser's offset.
export function localInputToIso(value) {
  if (!value) {
    return null;
  }
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) {
    throw new Error(`"${value}" is not a date and time. Use the date picker.`);
  }
  return `${formatLocalTime(date).replace(" ", "T")}${utcOffset(date)}`;
}

// The browser's UTC offset at `date` as "+02:00", which changes with daylight saving time.
export function utcOffset(date) {
  const pad = (n) => String(n).padStart(2, "0");
  const minutes = -date.getTimezoneOffset();
  const sign = minutes >= 0 ? "+" : "-";
  return `${sign}${pad(Math.floor(Math.abs(minutes) / 60))}:${pad(Math.abs(minutes) % 60)}`;
}

// "2024-05-01 10:00:00" in this browser's time zone: sortable and the same in every locale.
export function formatLocalTime(date) {
  const pad = (n) => String(n).padStart(2, "0");
  const day = `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`;
  return `${day} ${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}
