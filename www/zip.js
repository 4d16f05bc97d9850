// A minimal ZIP writer (STORE, no compression): enough to hand a folder of files to the
// user as one download, with no library and no network. Model weights barely compress, so
// storing them is what a real zip tool would do anyway. Files over 4 GiB (ZIP64) are refused.

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

export function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

// DOS date and time of `d` (the zip format's own).
function dosTime(d) {
  const time = (d.getHours() << 11) | (d.getMinutes() << 5) | (d.getSeconds() >> 1);
  const date = ((d.getFullYear() - 1980) << 9) | ((d.getMonth() + 1) << 5) | d.getDate();
  return { time, date };
}

// files: {name: Uint8Array} -> the bytes of a .zip holding them, in that order.
export function zipStore(files, now = new Date()) {
  const enc = new TextEncoder();
  const { time, date } = dosTime(now);
  const entries = Object.entries(files).map(([name, data]) => {
    if (data.length >= 0xffffffff) throw new Error(`${name} is too large for a zip (4 GiB); download it on its own`);
    return { name: enc.encode(name), data, crc: crc32(data) };
  });
  const size = entries.reduce((s, e) => s + 30 + e.name.length + e.data.length + 46 + e.name.length, 22);
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  let at = 0;
  const u16 = (v) => { view.setUint16(at, v, true); at += 2; };
  const u32 = (v) => { view.setUint32(at, v >>> 0, true); at += 4; };
  const bytes = (b) => { out.set(b, at); at += b.length; };
  // Fields shared by the local header and the central directory record.
  const common = (e) => { u16(20); u16(0x0800); u16(0); u16(time); u16(date); u32(e.crc); u32(e.data.length); u32(e.data.length); u16(e.name.length); u16(0); };
  for (const e of entries) {
    e.offset = at;
    u32(0x04034b50); common(e); bytes(e.name); bytes(e.data);
  }
  const dirStart = at;
  for (const e of entries) {
    u32(0x02014b50); u16(20); common(e); u16(0); u16(0); u16(0); u32(0); u32(e.offset); bytes(e.name);
  }
  const dirSize = at - dirStart;
  u32(0x06054b50); u16(0); u16(0); u16(entries.length); u16(entries.length); u32(dirSize); u32(dirStart); u16(0);
  return out;
}
