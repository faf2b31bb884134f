//! Hugging Face safetensors weights, single file or sharded (`model.safetensors.index.json`),
//! memory-mapped: a tensor is converted to f32 straight from the map, so the weights are never
//! held twice.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, SafeTensorError, SafeTensors};

use crate::error::{Error, Result};
use crate::model::weights::{summarize_dtypes, HostTensor, WeightSource};

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
    meta: Metadata,
}

/// The memory-mapped safetensors shards of one model, served as a [`WeightSource`].
pub struct SafetensorsWeights {
    origin: PathBuf,
    shards: Vec<Shard>,
    /// tensor name -> shard index
    index: HashMap<String, usize>,
}

fn open_shard(path: &Path) -> Result<Shard> {
    super::regular_file(path, super::MODEL_FILE)?;
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: read-only map; every access is bounds-checked against the header below.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let (n, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| header_error(path, &mmap, e))?;
    let data_start = 8 + n;
    let need = data_start + meta.data_len();
    if need > mmap.len() {
        return Err(Error::bad_file(
            path,
            format!(
                "truncated: the header promises {need} bytes, the file has {}",
                mmap.len()
            ),
        ));
    }
    Ok(Shard {
        path: path.to_path_buf(),
        mmap,
        data_start,
        meta,
    })
}

/// What is wrong with the header of `file`, in words (a cut file says "truncated").
fn header_error(path: &Path, file: &[u8], e: SafeTensorError) -> Error {
    let len = file.len();
    let claimed = file
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()));
    Error::bad_file(
        path,
        match (e, claimed) {
            (SafeTensorError::HeaderTooSmall, _) | (_, None) => format!(
                "truncated: {len} bytes, not even the 8-byte header length (incomplete download?)"
            ),
            (SafeTensorError::InvalidHeaderLength, Some(n)) => format!(
                "truncated or corrupt: the header length says {n} bytes, the file has {len} (incomplete download?)"
            ),
            (SafeTensorError::HeaderTooLarge, Some(n)) => format!(
                "corrupt: the header length says {n} bytes, more than the format allows"
            ),
            (SafeTensorError::MetadataIncompleteBuffer, _) => format!(
                "truncated or padded: the header's tensors do not cover the {len} bytes of the file (incomplete download?)"
            ),
            (e, _) => format!("not a valid safetensors file: {e}"),
        },
    )
}

impl SafetensorsWeights {
    /// Opens `dir/model.safetensors`, or the shards listed by `dir/model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        if single.exists() {
            let shard = open_shard(&single)?;
            let index = shard
                .meta
                .tensors()
                .keys()
                .map(|k| (k.clone(), 0))
                .collect();
            return Ok(Self {
                origin: single,
                shards: vec![shard],
                index,
            });
        }
        if !index_path.exists() {
            return Err(Error::bad_file(
                dir,
                "no model.safetensors or model.safetensors.index.json in this directory",
            ));
        }
        super::regular_file(&index_path, super::MODEL_FILE)?;
        let text = std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::bad_file(&index_path, format!("invalid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| {
                Error::bad_config(&index_path, "weight_map", "missing or not an object")
            })?;
        let mut shard_ids: HashMap<String, usize> = HashMap::new();
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| {
                Error::bad_config(&index_path, format!("weight_map.{name}"), "not a file name")
            })?;
            let id = match shard_ids.get(file) {
                Some(&id) => id,
                None => {
                    shards.push(open_shard(&dir.join(file))?);
                    shard_ids.insert(file.to_string(), shards.len() - 1);
                    shards.len() - 1
                }
            };
            if shards[id].meta.info(name).is_none() {
                return Err(Error::bad_tensor(
                    &shards[id].path,
                    name,
                    "listed in model.safetensors.index.json but not in this shard",
                ));
            }
            index.insert(name.clone(), id);
        }
        Ok(Self {
            origin: index_path,
            shards,
            index,
        })
    }
}

impl SafetensorsWeights {
    /// The stored dtype and shape of every tensor (what `dtype = "source"` is decided from).
    pub fn dtypes(&self) -> Vec<(Dtype, Vec<usize>)> {
        self.index
            .iter()
            .filter_map(|(n, &i)| self.shards[i].meta.info(n))
            .map(|i| (i.dtype, i.shape.clone()))
            .collect()
    }
}

impl WeightSource for SafetensorsWeights {
    fn origin(&self) -> &Path {
        &self.origin
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let s = &self.shards[*self.index.get(name)?];
        s.meta.info(name).map(|i| i.shape.clone())
    }

    fn names(&self) -> Vec<String> {
        let mut v: Vec<_> = self.index.keys().cloned().collect();
        v.sort();
        v
    }

    fn dtype_summary(&self) -> String {
        let names: Vec<String> = self
            .index
            .iter()
            .filter_map(|(n, &i)| self.shards[i].meta.info(n))
            .map(|i| format!("{:?}", i.dtype))
            .collect();
        summarize_dtypes(names.iter().map(String::as_str))
    }

    fn load(&self, name: &str) -> Result<HostTensor> {
        let shard = self
            .index
            .get(name)
            .map(|&i| &self.shards[i])
            .ok_or_else(|| Error::bad_tensor(&self.origin, name, "missing"))?;
        let info = shard.meta.info(name).expect("indexed tensors have info");
        let (a, b) = info.data_offsets;
        let bytes = &shard.mmap[shard.data_start + a..shard.data_start + b];
        let numel: usize = info.shape.iter().product();
        let width = match info.dtype {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            other => {
                return Err(Error::bad_tensor(
                    &shard.path,
                    name,
                    format!("dtype {other:?} is not supported (expected F32, F16 or BF16)"),
                ))
            }
        };
        if bytes.len() != numel * width {
            return Err(Error::bad_tensor(
                &shard.path,
                name,
                format!(
                    "{} bytes for shape {:?} of {:?}",
                    bytes.len(),
                    info.shape,
                    info.dtype
                ),
            ));
        }
        let data: Vec<f32> = match info.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            _ => bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        };
        Ok(HostTensor::new(info.shape.clone(), data))
    }
}
