//! The dense teacher's next-token distributions, computed once and cached as the top-k
//! log-probabilities per position plus the log of the remaining mass, so that every sparsity
//! level and schedule of a sweep distils from one teacher pass. The KL against the cached form
//! treats the tail as one outcome: sum_top-k p_T (log p_T - log p_S) + r_T (log r_T - log r_S),
//! exact when k covers the vocabulary.

use std::path::Path;

use burn::tensor::{activation::log_softmax, backend::Backend, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{Logits, Model};

/// Header of `teacher.bin`: `blocks x positions x k` u32 indices, then as many f32
/// log-probabilities, then `blocks x positions` f32 log tail masses (little endian).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopKHeader {
    /// Log-probabilities kept per position (at most the vocabulary size).
    pub k: usize,
    /// Token blocks covered.
    pub blocks: usize,
    /// Positions per block that predict a next token (seq_len - 1).
    pub positions: usize,
}

/// The cached teacher: per position, its k most likely next tokens (most likely first) and
/// their log-probabilities, and the log of the mass left over.
#[derive(Debug, Clone, PartialEq)]
pub struct TopK {
    /// The sizes.
    pub header: TopKHeader,
    /// Token ids, `[blocks * positions, k]`.
    pub idx: Vec<u32>,
    /// Natural-log probabilities of those tokens, `[blocks * positions, k]`.
    pub logp: Vec<f32>,
    /// `ln(1 - sum exp(logp))` per position (floored at `ln 1e-30`), `[blocks * positions]`.
    pub log_rest: Vec<f32>,
}

/// log(1 - sum exp(x)) without cancellation trouble at the ends.
fn log_rest(logps: &[f32]) -> f32 {
    let mass: f64 = logps.iter().map(|&x| (x as f64).exp()).sum();
    ((1.0 - mass).max(1e-30)).ln() as f32
}

/// Runs the dense model over `blocks` and keeps the top-k of every position.
pub fn compute<B: Backend>(
    model: &Model<B>,
    blocks: &[Vec<u32>],
    k: usize,
    mut on_block: impl FnMut(),
) -> TopK {
    let seq = blocks.first().map_or(0, Vec::len);
    let positions = seq.saturating_sub(1);
    let v = model.config.vocab_size;
    let k = k.min(v);
    let mut out = TopK {
        header: TopKHeader {
            k,
            blocks: blocks.len(),
            positions,
        },
        idx: Vec::with_capacity(blocks.len() * positions * k),
        logp: Vec::with_capacity(blocks.len() * positions * k),
        log_rest: Vec::with_capacity(blocks.len() * positions),
    };
    for b in blocks {
        let ids: Vec<i64> = b.iter().map(|&x| x as i64).collect();
        let t = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, seq]), &model.device);
        let lp = log_softmax(model.forward(t, None, None, Logits::All), 2);
        let lp = crate::backend::host_f32(lp);
        for p in 0..positions {
            let row = &lp[p * v..(p + 1) * v];
            let mut order: Vec<u32> = (0..v as u32).collect();
            order.select_nth_unstable_by(k - 1, |&a, &b| {
                row[b as usize].total_cmp(&row[a as usize])
            });
            let top = &mut order[..k];
            top.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
            let vals: Vec<f32> = top.iter().map(|&i| row[i as usize]).collect();
            out.log_rest.push(log_rest(&vals));
            out.idx.extend_from_slice(top);
            out.logp.extend(vals);
        }
        on_block();
    }
    out
}

impl TopK {
    /// Appends the rows of later blocks (computed with the same k).
    pub fn append(&mut self, other: TopK) {
        debug_assert_eq!(
            (self.header.k, self.header.positions),
            (other.header.k, other.header.positions)
        );
        self.header.blocks += other.header.blocks;
        self.idx.extend(other.idx);
        self.logp.extend(other.logp);
        self.log_rest.extend(other.log_rest);
    }

    /// Writes `teacher.json` (the header) and `teacher.bin` (the data) into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let h = dir.join("teacher.json");
        std::fs::write(&h, serde_json::to_string_pretty(&self.header).unwrap())
            .map_err(|e| Error::io(&h, e))?;
        let mut bytes = Vec::with_capacity((self.idx.len() * 2 + self.log_rest.len()) * 4);
        bytes.extend(self.idx.iter().flat_map(|x| x.to_le_bytes()));
        bytes.extend(self.logp.iter().flat_map(|x| x.to_le_bytes()));
        bytes.extend(self.log_rest.iter().flat_map(|x| x.to_le_bytes()));
        let b = dir.join("teacher.bin");
        std::fs::write(&b, bytes).map_err(|e| Error::io(&b, e))
    }

    /// Reads what [`write`](Self::write) wrote, checking the data's length against the header.
    pub fn read(dir: &Path) -> Result<Self> {
        let h = dir.join("teacher.json");
        let text = std::fs::read_to_string(&h).map_err(|e| Error::io(&h, e))?;
        let header: TopKHeader = serde_json::from_str(&text)
            .map_err(|e| Error::bad_file(&h, format!("expected {{k, blocks, positions}}: {e}")))?;
        let b = dir.join("teacher.bin");
        let bytes = std::fs::read(&b).map_err(|e| Error::io(&b, e))?;
        let n = header.blocks * header.positions;
        let want = (2 * n * header.k + n) * 4;
        if bytes.len() != want {
            return Err(Error::bad_file(
                &b,
                format!(
                    "{} bytes, expected {want} for {n} positions x top-{}",
                    bytes.len(),
                    header.k
                ),
            ));
        }
        let words: Vec<[u8; 4]> = bytes
            .chunks_exact(4)
            .map(|c| c.try_into().unwrap())
            .collect();
        let nk = n * header.k;
        Ok(Self {
            idx: words[..nk].iter().map(|w| u32::from_le_bytes(*w)).collect(),
            logp: words[nk..2 * nk]
                .iter()
                .map(|w| f32::from_le_bytes(*w))
                .collect(),
            log_rest: words[2 * nk..]
                .iter()
                .map(|w| f32::from_le_bytes(*w))
                .collect(),
            header,
        })
    }

    /// The cached rows of the given blocks, as tensors `[rows, k]`, `[rows, k]`, `[rows, 1]`.
    pub fn rows<B: Backend>(
        &self,
        blocks: &[usize],
        dev: &B::Device,
    ) -> (Tensor<B, 2, Int>, Tensor<B, 2>, Tensor<B, 2>) {
        let (k, rows) = (self.header.k, blocks.len() * self.header.positions);
        let (idx, lp, rest) = self.host_rows(blocks);
        let idx: Vec<i64> = idx.into_iter().map(i64::from).collect();
        (
            Tensor::from_data(TensorData::new(idx, [rows, k]), dev),
            Tensor::from_data(TensorData::new(lp, [rows, k]), dev),
            Tensor::from_data(TensorData::new(rest, [rows, 1]), dev),
        )
    }

    /// The rows of `blocks` on the host: indices and log-probabilities `[rows * k]`, log tail
    /// masses `[rows]`.
    pub fn host_rows(&self, blocks: &[usize]) -> (Vec<u32>, Vec<f32>, Vec<f32>) {
        let (k, p) = (self.header.k, self.header.positions);
        let rows = blocks.len() * p;
        let mut idx = Vec::with_capacity(rows * k);
        let mut lp = Vec::with_capacity(rows * k);
        let mut rest = Vec::with_capacity(rows);
        for &b in blocks {
            idx.extend_from_slice(&self.idx[b * p * k..(b + 1) * p * k]);
            lp.extend_from_slice(&self.logp[b * p * k..(b + 1) * p * k]);
            rest.extend_from_slice(&self.log_rest[b * p..(b + 1) * p]);
        }
        (idx, lp, rest)
    }
}

/// KL(teacher || student) per row against the cached top-k, averaged: `ls` are the student's
/// log-probabilities `[rows, vocab]`.
pub fn kl_topk<B: Backend>(
    ls: Tensor<B, 2>,
    idx: Tensor<B, 2, Int>,
    lt: Tensor<B, 2>,
    lt_rest: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let ls_k = ls.gather(1, idx);
    let pt = lt.clone().exp();
    let head = (pt * (lt - ls_k.clone())).sum_dim(1);
    let rest_s = (ls_k.exp().sum_dim(1).neg() + 1.0).clamp_min(1e-12).log();
    let tail = lt_rest.clone().exp() * (lt_rest - rest_s);
    (head + tail).mean()
}
