//! The columns encoding of a batch (docs/protocol.md, "The columns encoding"): what the spool
//! holds, and what a `vigil` sink sends to a receiver that announced it on the upgrade.
//!
//! A [`Batch`] repeats `name`, `tags`, `ts_ms` and `value` as keys in every sample (about 70
//! bytes each). The columns form lists each series (name and tags) once per batch, then packs
//! the samples into one byte string: per sample the series' index, the timestamp as a
//! difference from the previous sample's, and the value XORed with the previous value of the
//! same series with its zero bytes left out. A steady series costs a few bytes per sample.
//!
//! On a connection where the receiver announced the encoding, a batch need not repeat series
//! the connection already carried: it defines only the new ones and names every series by its
//! number on the connection (`refs`). A batch in the spool never does this (it must be
//! readable on its own after any reconnect); [`SentSeries`] rewrites it at send time.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::protocol::{Batch, WireSample};

/// The encoding's name in the `X-Vigil-Encodings` request header and the `X-Vigil-Encoding`
/// answer.
pub const NAME: &str = "columns";
/// Series a connection may define, at most. A sink whose connection is full sends batches that
/// carry their own series; a receiver refuses a batch that would pass it.
pub const MAX_CONNECTION_SERIES: usize = 100_000;

/// A series: the metric name and its tags.
pub type Series = (String, BTreeMap<String, String>);

#[derive(Debug, thiserror::Error)]
pub enum ColumnsError {
    #[error("not a batch: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("the columns are damaged: {0}")]
    Damaged(&'static str),
    #[error("the batch names series of its connection (refs); it cannot be read on its own")]
    NeedsConnection,
}

/// A batch in the columns form, as encoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Packed {
    pub agent_id: String,
    #[serde(default)]
    pub sink: String,
    pub seq: u64,
    pub host: String,
    /// The number of samples in `columns`.
    pub count: u64,
    /// The batch's series (when `refs` is absent), or the series it defines on its connection.
    pub series: Vec<Series>,
    /// Per series of the batch, its number on the connection (unsigned LEB128 each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refs: Option<ByteBuf>,
    pub columns: ByteBuf,
    #[serde(default)]
    pub crash_reports: Vec<serde_json::Value>,
}

/// Either form of a batch, told apart by its keys (`samples`, or `columns`).
#[derive(Deserialize)]
struct AnyBatch {
    agent_id: String,
    #[serde(default)]
    sink: String,
    seq: u64,
    host: String,
    #[serde(default)]
    samples: Option<Vec<WireSample>>,
    #[serde(default)]
    count: Option<u64>,
    #[serde(default)]
    series: Option<Vec<Series>>,
    #[serde(default)]
    refs: Option<ByteBuf>,
    #[serde(default)]
    columns: Option<ByteBuf>,
    #[serde(default)]
    crash_reports: Vec<serde_json::Value>,
}

/// A decoded message: a [`Batch`] as it was sent (`samples`), or in the columns form.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Samples(Batch),
    Packed(Packed),
}

/// Decodes a batch in either form.
pub fn decode(bytes: &[u8]) -> Result<Decoded, ColumnsError> {
    let b: AnyBatch = rmp_serde::from_slice(bytes)?;
    match (b.samples, b.columns) {
        (Some(samples), None) => Ok(Decoded::Samples(Batch {
            agent_id: b.agent_id,
            sink: b.sink,
            seq: b.seq,
            host: b.host,
            samples,
            crash_reports: b.crash_reports,
        })),
        (None, Some(columns)) => Ok(Decoded::Packed(Packed {
            agent_id: b.agent_id,
            sink: b.sink,
            seq: b.seq,
            host: b.host,
            count: b.count.ok_or(ColumnsError::Damaged("no count"))?,
            series: b.series.ok_or(ColumnsError::Damaged("no series"))?,
            refs: b.refs,
            columns,
            crash_reports: b.crash_reports,
        })),
        (Some(_), Some(_)) => Err(ColumnsError::Damaged("both samples and columns")),
        (None, None) => Err(ColumnsError::Damaged("neither samples nor columns")),
    }
}

/// Decodes a batch that can be read on its own (either form, no `refs`) into a [`Batch`].
pub fn decode_batch(bytes: &[u8]) -> Result<Batch, ColumnsError> {
    match decode(bytes)? {
        Decoded::Samples(b) => Ok(b),
        Decoded::Packed(p) => p.into_batch(),
    }
}

/// The number of samples in an encoded batch of either form, without decoding them (0 when
/// it does not decode): what the spool counts when its size limit drops a batch.
pub fn sample_count(bytes: &[u8]) -> u64 {
    #[derive(Deserialize)]
    struct Count {
        #[serde(default)]
        samples: Option<Vec<serde::de::IgnoredAny>>,
        #[serde(default)]
        count: Option<u64>,
    }
    match rmp_serde::from_slice::<Count>(bytes) {
        Ok(Count { samples: Some(s), .. }) => s.len() as u64,
        Ok(Count { count: Some(n), .. }) => n,
        _ => 0,
    }
}

/// Encodes `b` in the columns form, its series listed once each in order of first use.
pub fn encode(b: &Batch) -> Vec<u8> {
    let mut index: HashMap<(&str, &BTreeMap<String, String>), u32, foldhash::fast::RandomState> =
        HashMap::default();
    let mut series: Vec<Series> = Vec::new();
    let mut prev_values: Vec<u64> = Vec::new();
    let mut columns = Vec::with_capacity(b.samples.len() * 6);
    let mut prev_ts = 0i64;
    for s in &b.samples {
        let i = *index.entry((s.name.as_str(), &s.tags)).or_insert_with(|| {
            series.push((s.name.clone(), s.tags.clone()));
            prev_values.push(0);
            (series.len() - 1) as u32
        });
        put_varint(&mut columns, u64::from(i));
        put_varint(&mut columns, zigzag(s.ts_ms.wrapping_sub(prev_ts)));
        prev_ts = s.ts_ms;
        let bits = s.value.to_bits();
        put_xor(&mut columns, bits ^ prev_values[i as usize]);
        prev_values[i as usize] = bits;
    }
    let packed = Packed {
        agent_id: b.agent_id.clone(),
        sink: b.sink.clone(),
        seq: b.seq,
        host: b.host.clone(),
        count: b.samples.len() as u64,
        series,
        refs: None,
        columns: ByteBuf::from(columns),
        crash_reports: b.crash_reports.clone(),
    };
    super::protocol::encode(&packed)
}

impl Packed {
    /// Calls `f(series, ts_ms, value)` for every sample, `series` indexing the batch's own
    /// series (`refs` when present, else `series`), of which there are `n_series`. Checks
    /// everything: indices in range, the count, no bytes left over.
    pub fn for_each(&self, n_series: usize, mut f: impl FnMut(usize, i64, f64)) -> Result<(), ColumnsError> {
        let mut r = Reader(&self.columns);
        let mut prev_values = vec![0u64; n_series];
        let mut prev_ts = 0i64;
        let mut n = 0u64;
        while !r.0.is_empty() {
            let i = r.varint()?;
            let i = usize::try_from(i)
                .ok()
                .filter(|&i| i < n_series)
                .ok_or(ColumnsError::Damaged("series index out of range"))?;
            let ts = prev_ts.wrapping_add(unzigzag(r.varint()?));
            prev_ts = ts;
            let bits = r.xor()? ^ prev_values[i];
            prev_values[i] = bits;
            n += 1;
            if n > self.count {
                return Err(ColumnsError::Damaged("more samples than count"));
            }
            f(i, ts, f64::from_bits(bits));
        }
        if n != self.count {
            return Err(ColumnsError::Damaged("fewer samples than count"));
        }
        Ok(())
    }

    /// The connection numbers of the batch's series (`refs`), decoded.
    pub fn refs(&self) -> Result<Option<Vec<u64>>, ColumnsError> {
        let Some(refs) = &self.refs else { return Ok(None) };
        let mut r = Reader(refs);
        let mut out = Vec::new();
        while !r.0.is_empty() {
            out.push(r.varint()?);
        }
        Ok(Some(out))
    }

    /// The batch with its samples spelled out (it must carry its own series).
    pub fn into_batch(self) -> Result<Batch, ColumnsError> {
        if self.refs.is_some() {
            return Err(ColumnsError::NeedsConnection);
        }
        // A sample takes at least 3 bytes: a damaged count cannot make a large allocation.
        let mut samples = Vec::with_capacity(self.count.min(self.columns.len() as u64 / 3) as usize);
        self.for_each(self.series.len(), |i, ts_ms, value| {
            let (name, tags) = &self.series[i];
            samples.push(WireSample { name: name.clone(), tags: tags.clone(), ts_ms, value });
        })?;
        Ok(Batch {
            agent_id: self.agent_id,
            sink: self.sink,
            seq: self.seq,
            host: self.host,
            samples,
            crash_reports: self.crash_reports,
        })
    }
}

/// The sink's side of a connection that speaks the columns encoding: which series the
/// receiver already knows, and their numbers.
#[derive(Default)]
pub struct SentSeries {
    ids: HashMap<Series, u64, foldhash::fast::RandomState>,
}

impl SentSeries {
    /// The message to send for the spooled batch `payload`: a columns batch naming the series
    /// this connection already defined and defining the others; `None` (send the spooled bytes
    /// as they are) when they are a `samples` batch or the connection cannot define more series.
    pub fn wire(&mut self, payload: &[u8]) -> Result<Option<Vec<u8>>, ColumnsError> {
        let mut p = match decode(payload)? {
            Decoded::Samples(_) => return Ok(None),
            Decoded::Packed(p) if p.refs.is_some() => return Err(ColumnsError::NeedsConnection),
            Decoded::Packed(p) => p,
        };
        let new = p.series.iter().filter(|s| !self.ids.contains_key(*s)).count();
        if self.ids.len() + new > MAX_CONNECTION_SERIES {
            return Ok(None);
        }
        let mut refs = Vec::with_capacity(p.series.len() * 2);
        let mut defs = Vec::with_capacity(new);
        for s in std::mem::take(&mut p.series) {
            let next = self.ids.len() as u64;
            let id = match self.ids.get(&s) {
                Some(&id) => id,
                None => {
                    self.ids.insert(s.clone(), next);
                    defs.push(s);
                    next
                }
            };
            put_varint(&mut refs, id);
        }
        p.series = defs;
        p.refs = Some(ByteBuf::from(refs));
        Ok(Some(super::protocol::encode(&p)))
    }
}

/// The spooled batch `payload` for a receiver that knows only the `samples` form: `None` when
/// it is in that form already.
pub fn samples_form(payload: &[u8]) -> Result<Option<Vec<u8>>, ColumnsError> {
    match decode(payload)? {
        Decoded::Samples(_) => Ok(None),
        Decoded::Packed(p) => Ok(Some(super::protocol::encode(&p.into_batch()?))),
    }
}

/// The receiver's side of a connection: what it made of each series the sink defined on it
/// (`T`: a JSON rendering, or the series itself).
pub struct SeriesTable<T> {
    items: Vec<T>,
}

impl<T> Default for SeriesTable<T> {
    fn default() -> Self {
        SeriesTable { items: Vec::new() }
    }
}

impl<T: Clone> SeriesTable<T> {
    /// The batch's own series, made with `make` (a batch with `refs` first defines its new
    /// series on the connection, then names its series by their numbers there).
    pub fn local(&mut self, p: &Packed, mut make: impl FnMut(&Series) -> T) -> Result<Vec<T>, ColumnsError> {
        let Some(refs) = p.refs()? else { return Ok(p.series.iter().map(make).collect()) };
        if self.items.len() + p.series.len() > MAX_CONNECTION_SERIES {
            return Err(ColumnsError::Damaged("the connection defines more series than allowed"));
        }
        self.items.extend(p.series.iter().map(&mut make));
        refs.into_iter()
            .map(|r| {
                usize::try_from(r)
                    .ok()
                    .and_then(|r| self.items.get(r))
                    .cloned()
                    .ok_or(ColumnsError::Damaged("a ref names no series of the connection"))
            })
            .collect()
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// An XORed value: `00` for no change, else a byte `LZ << 4 | N` (LZ leading zero bytes,
/// N = 1..8 bytes kept) and those N bytes, most significant first.
fn put_xor(out: &mut Vec<u8>, x: u64) {
    if x == 0 {
        out.push(0);
        return;
    }
    let lz = x.leading_zeros() / 8;
    let tz = x.trailing_zeros() / 8;
    let n = 8 - lz - tz;
    out.push((lz << 4 | n) as u8);
    let be = x.to_be_bytes();
    out.extend_from_slice(&be[lz as usize..(lz + n) as usize]);
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, ColumnsError> {
        let (&b, rest) = self.0.split_first().ok_or(ColumnsError::Damaged("cut short"))?;
        self.0 = rest;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, ColumnsError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ColumnsError::Damaged("a varint longer than 64 bits"))
    }

    fn xor(&mut self) -> Result<u64, ColumnsError> {
        let c = self.byte()?;
        if c == 0 {
            return Ok(0);
        }
        let (lz, n) = (usize::from(c >> 4), usize::from(c & 0x0f));
        if n == 0 || lz + n > 8 {
            return Err(ColumnsError::Damaged("a bad value header"));
        }
        if self.0.len() < n {
            return Err(ColumnsError::Damaged("cut short"));
        }
        let mut be = [0u8; 8];
        be[lz..lz + n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(u64::from_be_bytes(be))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, RngExt, SeedableRng};

    fn batch(samples: Vec<WireSample>) -> Batch {
        Batch {
            agent_id: "a".repeat(32),
            sink: "main".into(),
            seq: 9,
            host: "h".into(),
            samples,
            crash_reports: vec![serde_json::json!({"id": "x", "signal": 11})],
        }
    }

    fn sample(name: &str, dev: &str, ts_ms: i64, value: f64) -> WireSample {
        WireSample { name: name.into(), tags: BTreeMap::from([("device".into(), dev.into())]), ts_ms, value }
    }

    /// Every value survives bit for bit (NaN, infinities, -0.0, subnormals), timestamps in any
    /// order (negative differences), and series interleaved; the old form still decodes.
    #[test]
    fn columns_round_trip_every_value_and_the_old_form_still_decodes() {
        let values = [
            0.0,
            -0.0,
            1.0,
            1.5,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE / 4.0,
            1e300,
            12345.0,
        ];
        let mut samples = Vec::new();
        for (k, v) in values.iter().enumerate() {
            samples.push(sample("disk_reads_sec", "sda", 1_700_000_000_000 - k as i64 * 1000, *v));
            samples.push(sample("disk_reads_sec", "sdb", 1_700_000_000_000, -*v));
            samples.push(sample("load_1", "", i64::MIN + k as i64, *v));
        }
        let b = batch(samples);
        let packed = encode(&b);
        let back = decode_batch(&packed).unwrap();
        assert_eq!(back.samples.len(), b.samples.len());
        for (x, y) in back.samples.iter().zip(&b.samples) {
            assert_eq!(
                (&x.name, &x.tags, x.ts_ms, x.value.to_bits()),
                (&y.name, &y.tags, y.ts_ms, y.value.to_bits())
            );
        }
        assert_eq!(back.crash_reports, b.crash_reports);
        assert_eq!(sample_count(&packed), 30);
        let Decoded::Packed(p) = decode(&packed).unwrap() else { panic!("not columns") };
        assert_eq!(p.series.len(), 3, "each series once");
        // A batch in the old form (an older agent's spool) decodes as it always did.
        let old = super::super::protocol::encode(&b);
        let Decoded::Samples(again) = decode(&old).unwrap() else { panic!("not the samples form") };
        assert_eq!(super::super::protocol::encode(&again), old, "NaN included, bit for bit");
        assert_eq!(sample_count(&old), 30);
    }

    /// A steady host (the same series every collection, values that move a little) costs a
    /// few bytes per sample in the spool, and fewer on a connection that knows its series.
    #[test]
    fn a_steady_batch_is_small_and_a_connection_sends_each_series_once() {
        let names = ["cpu_user", "cpu_system", "mem_used_bytes", "disk_reads_sec", "net_rx_bytes_sec"];
        let make = |round: i64| {
            let mut v = Vec::new();
            for (k, n) in names.iter().enumerate() {
                for dev in ["sda", "sdb", "eth0", "lo"] {
                    let value = if k == 2 { 8.0e9 + (round * 4096) as f64 } else { (round % 7) as f64 * 0.5 };
                    v.push(sample(n, dev, 1_700_000_000_000 + round * 10_000, value));
                }
            }
            v
        };
        let one = batch((0..30).flat_map(make).collect());
        let old = super::super::protocol::encode(&one).len() as f64 / 600.0;
        let new = encode(&one).len() as f64 / 600.0;
        assert!(new * 8.0 < old, "columns {new:.1} B/sample against {old:.1}");

        let mut sent = SentSeries::default();
        let mut table = SeriesTable::<Series>::default();
        for round in 0..3 {
            let b = Batch { seq: round + 1, ..batch(make(round as i64)) };
            let wire = sent.wire(&encode(&b)).unwrap().unwrap();
            let Decoded::Packed(p) = decode(&wire).unwrap() else { panic!("not columns") };
            assert_eq!(p.series.len(), if round == 0 { 20 } else { 0 }, "series defined once per connection");
            let local = table.local(&p, |s| s.clone()).unwrap();
            let mut got = Vec::new();
            p.for_each(local.len(), |i, ts, v| got.push(sample(&local[i].0, &local[i].1["device"], ts, v)))
                .unwrap();
            assert_eq!(got, b.samples);
        }
        // A samples batch (an older spool) goes out as it is.
        let old = super::super::protocol::encode(&one);
        assert_eq!(sent.wire(&old).unwrap(), None);
        assert_eq!(samples_form(&old).unwrap(), None);
        assert_eq!(decode(&samples_form(&encode(&one)).unwrap().unwrap()).unwrap(), Decoded::Samples(one));
    }

    /// Decoding is total: damaged and random columns batches (and refs) are errors, never a
    /// panic or an allocation sized by a damaged count.
    #[test]
    fn property_damaged_columns_are_errors_not_panics() {
        let mut rng = StdRng::seed_from_u64(0xC011);
        for case in 0..50_000u32 {
            let n = rng.random_range(0..6);
            let b = batch(
                (0..n)
                    .map(|i| sample(&format!("m{}", i % 3), "sda", rng.random(), rng.random::<f64>() * 1e6))
                    .collect(),
            );
            let mut bytes = encode(&b);
            if case % 3 == 0 {
                bytes = SentSeries::default().wire(&bytes).unwrap().unwrap();
            }
            let bytes = crate::mutate::mutate(&mut rng, &bytes);
            let _ = sample_count(&bytes);
            let _ = decode_batch(&bytes);
            if let Ok(Decoded::Packed(p)) = decode(&bytes) {
                let mut table = SeriesTable::<Series>::default();
                if let Ok(local) = table.local(&p, |s| s.clone()) {
                    let _ = p.for_each(local.len(), |_, _, _| {});
                }
            }
        }
    }
}
