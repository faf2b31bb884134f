//! GGUF (v2, v3) reader: header, metadata, tensor index, and tensor data by memory map.
//!
//! Layout: magic "GGUF", u32 version, u64 tensor count, u64 metadata count, the metadata
//! key/values, the tensor infos (name, dims in ggml order — ne0 first —, type, offset), then
//! the tensor data at the next multiple of `general.alignment` (default 32).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::quants::{self, GgmlType};
use crate::error::{Error, Result};

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// GGUF type 0.
    U8(u8),
    /// GGUF type 1.
    I8(i8),
    /// GGUF type 2.
    U16(u16),
    /// GGUF type 3.
    I16(i16),
    /// GGUF type 4.
    U32(u32),
    /// GGUF type 5.
    I32(i32),
    /// GGUF type 10.
    U64(u64),
    /// GGUF type 11.
    I64(i64),
    /// GGUF type 6.
    F32(f32),
    /// GGUF type 12.
    F64(f64),
    /// GGUF type 7 (one byte, non-zero is true).
    Bool(bool),
    /// GGUF type 8: a u64 length and UTF-8 bytes.
    Str(String),
    /// GGUF type 9: an element type, a u64 count and the elements (not nested here).
    Array(Vec<Value>),
}

impl Value {
    /// Any integer that is not negative, widened.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) if v >= 0 => Some(v as u64),
            Value::I16(v) if v >= 0 => Some(v as u64),
            Value::I32(v) if v >= 0 => Some(v as u64),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }
    /// A float, or an integer that [`as_u64`](Self::as_u64) accepts.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            // Shortest decimal that round-trips the f32: 1e-5 stays 1e-5, not 9.99999974e-6.
            Value::F32(v) => v.to_string().parse().ok(),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
    /// The string of a [`Value::Str`].
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    /// The flag of a [`Value::Bool`].
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    /// The elements of a [`Value::Array`].
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where one tensor lives in the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Tensor name as the file spells it (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions in ggml order (ne0 = innermost / row length).
    pub ne: Vec<usize>,
    /// Storage type (float or quantisation).
    pub ty: GgmlType,
    /// Absolute byte offset in the file.
    pub offset: usize,
    /// Bytes of (quantised) data.
    pub n_bytes: usize,
}

impl TensorInfo {
    /// Shape in row-major (PyTorch) order: the reverse of ggml's.
    pub fn shape(&self) -> Vec<usize> {
        self.ne.iter().rev().copied().collect()
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.ne.iter().product()
    }
}

/// An open GGUF file: its parsed header and a memory map of the data.
pub struct GgufFile {
    /// Where the file is.
    pub path: PathBuf,
    /// GGUF format version (2 or 3).
    pub version: u32,
    /// Metadata key/values by key.
    pub metadata: BTreeMap<String, Value>,
    /// Tensor index by name.
    pub tensors: BTreeMap<String, TensorInfo>,
    /// Tensor names in file order.
    pub order: Vec<String>,
    mmap: Mmap,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(Error::bad_file(
                self.path,
                format!(
                    "truncated GGUF: needed {n} bytes for {what} at offset {}, file has {}",
                    self.pos,
                    self.buf.len()
                ),
            )),
        }
    }
    fn u8(&mut self, w: &str) -> Result<u8> {
        Ok(self.take(1, w)?[0])
    }
    fn u16(&mut self, w: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2, w)?.try_into().unwrap()))
    }
    fn u32(&mut self, w: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, w)?.try_into().unwrap()))
    }
    fn u64(&mut self, w: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, w)?.try_into().unwrap()))
    }
    fn len(&mut self, w: &str) -> Result<usize> {
        let n = self.u64(w)?;
        // A length can never exceed what is left of the file: reject garbage before allocating.
        if n > (self.buf.len() - self.pos) as u64 {
            return Err(Error::bad_file(
                self.path,
                format!(
                    "truncated or corrupt GGUF: {w} claims {n} items at offset {}, more than the {} bytes left in the file",
                    self.pos,
                    self.buf.len() - self.pos
                ),
            ));
        }
        Ok(n as usize)
    }
    fn string(&mut self, w: &str) -> Result<String> {
        let n = self.len(w)?;
        let b = self.take(n, w)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| Error::bad_file(self.path, format!("{w} is not valid UTF-8")))
    }
    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.u8(key)?),
            1 => Value::I8(self.u8(key)? as i8),
            2 => Value::U16(self.u16(key)?),
            3 => Value::I16(self.u16(key)? as i16),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(self.u32(key)? as i32),
            6 => Value::F32(f32::from_bits(self.u32(key)?)),
            7 => Value::Bool(self.u8(key)? != 0),
            8 => Value::Str(self.string(key)?),
            9 if depth == 0 => {
                let ity = self.u32(key)?;
                let n = self.len(key)?;
                let mut v = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    v.push(self.value(ity, key, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(self.u64(key)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(key)?)),
            other => {
                return Err(Error::bad_file(
                    self.path,
                    format!("metadata key `{key}`: unknown GGUF value type {other}"),
                ))
            }
        })
    }
}

/// A tensor's index entry before placement: name, dims (ggml order), type, offset relative to
/// the data section.
type RawInfo = (String, Vec<usize>, GgmlType, usize);

impl Reader<'_> {
    /// Checks the magic and version; returns the version.
    fn header(&mut self) -> Result<u32> {
        let magic = self.take(4, "magic")?;
        if magic != b"GGUF" {
            return Err(Error::bad_file(
                self.path,
                format!("not a GGUF file: magic is {magic:?}, expected \"GGUF\""),
            ));
        }
        let version = self.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(Error::bad_file(
                self.path,
                format!("GGUF version {version} is not supported (expected 2 or 3)"),
            ));
        }
        Ok(version)
    }

    /// `n_kv` metadata key/values.
    fn metadata(&mut self, n_kv: u64) -> Result<BTreeMap<String, Value>> {
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = self.string("metadata key")?;
            let ty = self.u32(&key)?;
            let v = self.value(ty, &key, 0)?;
            metadata.insert(key, v);
        }
        Ok(metadata)
    }

    /// One tensor info: name, dims, type and relative offset.
    fn tensor_info(&mut self) -> Result<RawInfo> {
        let name = self.string("tensor name")?;
        let nd = self.u32(&name)? as usize;
        if nd == 0 || nd > 4 {
            return Err(Error::bad_tensor(
                self.path,
                &name,
                format!("{nd} dimensions (expected 1 to 4)"),
            ));
        }
        let mut ne = Vec::with_capacity(nd);
        for _ in 0..nd {
            ne.push(self.u64(&name)? as usize);
        }
        // A model's tensors are never empty; a zero would hide any other dimension's size.
        if ne.contains(&0) {
            return Err(Error::bad_tensor(
                self.path,
                &name,
                format!("dimensions {ne:?} include a zero"),
            ));
        }
        let tid = self.u32(&name)?;
        let ty = GgmlType::from_id(tid).ok_or_else(|| {
            Error::bad_tensor(
                self.path,
                &name,
                format!("ggml type id {tid} is not supported (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K)"),
            )
        })?;
        let offset = self.u64(&name)? as usize;
        Ok((name, ne, ty, offset))
    }
}

/// `general.alignment` (default 32), which must be a power of two.
fn alignment(path: &Path, metadata: &BTreeMap<String, Value>) -> Result<usize> {
    let align = metadata
        .get("general.alignment")
        .and_then(Value::as_u64)
        .unwrap_or(32) as usize;
    if align == 0 || !align.is_power_of_two() {
        return Err(Error::bad_config(
            path,
            "general.alignment",
            format!("{align} is not a power of two"),
        ));
    }
    Ok(align)
}

/// Places a tensor whose data starts at `data_start + rel`, checking its rows against its
/// type's blocks, its offset against the alignment and its extent against `file_len`. Sizes
/// come from the file: every product and sum is checked.
fn place_tensor(
    path: &Path,
    (name, ne, ty, rel): RawInfo,
    (data_start, align): (usize, usize),
    file_len: usize,
) -> Result<TensorInfo> {
    let bad = |what: String| Error::bad_tensor(path, &name, what);
    // ggml stores whole blocks per row, so every row (and every expert of a stack) is whole.
    let (block_elems, block_bytes) = ty.block();
    if !ne[0].is_multiple_of(block_elems) {
        return Err(bad(format!(
            "rows of {} elements are not a whole number of {} blocks",
            ne[0],
            ty.name()
        )));
    }
    let n_bytes = ne
        .iter()
        .try_fold(1usize, |p, &d| p.checked_mul(d))
        .and_then(|numel| (numel / block_elems).checked_mul(block_bytes))
        .ok_or_else(|| bad(format!("dimensions {ne:?} overflow")))?;
    if !rel.is_multiple_of(align) {
        return Err(bad(format!(
            "data offset {rel} is not a multiple of the alignment {align}"
        )));
    }
    let offset = data_start.checked_add(rel);
    let end = offset.and_then(|o| o.checked_add(n_bytes));
    match (offset, end) {
        (Some(offset), Some(end)) if end <= file_len => Ok(TensorInfo {
            name,
            ne,
            ty,
            offset,
            n_bytes,
        }),
        _ => Err(bad(format!(
            "data runs past the end of the file (needs {n_bytes} bytes at offset {data_start} + {rel}, file has {file_len}): truncated download?"
        ))),
    }
}

impl GgufFile {
    /// Maps the file and parses its header, checking every tensor's type and extent.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; a file truncated underneath us is the user's problem
        // (as with every mmap-based loader), and we bounds-check every access against its length.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let mut r = Reader {
            buf: &mmap,
            pos: 0,
            path,
        };
        let version = r.header()?;
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        let metadata = r.metadata(n_kv)?;
        let infos = (0..n_tensors)
            .map(|_| r.tensor_info())
            .collect::<Result<Vec<_>>>()?;
        let align = alignment(path, &metadata)?;
        let data_start = r.pos.div_ceil(align).saturating_mul(align);
        let mut tensors = BTreeMap::new();
        let mut order = Vec::new();
        for raw in infos {
            let info = place_tensor(path, raw, (data_start, align), mmap.len())?;
            order.push(info.name.clone());
            tensors.insert(info.name.clone(), info);
        }
        Ok(Self {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            order,
            mmap,
        })
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// Raw bytes of a tensor (still quantised).
    pub fn raw(&self, info: &TensorInfo) -> &[u8] {
        &self.mmap[info.offset..info.offset + info.n_bytes]
    }

    /// A tensor dequantised to f32, in row-major order with shape `info.shape()`.
    pub fn dequantize(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::bad_tensor(&self.path, name, "not in the file"))?;
        let mut out = vec![0f32; info.numel()];
        quants::dequantize(info.ty, self.raw(info), &mut out);
        Ok((info.shape(), out))
    }
}
