//! burn-flex's implementation of [`ModelBackend`]: host kernels on f32 memory where burn's
//! decomposed ops make many passes (each with a fresh buffer) over the same data. Besides the
//! attention below: the LM head's softmax part (one pass per row), RoPE (one pass that reads the
//! head-major view in place), AdamW (one in-place pass over parameter, gradient and moments) and
//! the gradient's sum of squares. Every kernel falls back to the tensor-op version on other
//! dtypes.
//!
//! The attention kernels: the forward and the backward of [`ModelBackend::causal_attention`],
//! tile by tile.
//!
//! The generic blockwise path builds each block's `[rows, keys]` mask as a tensor and runs a
//! dozen tensor ops over the scores; on a CPU those passes, not the matrix products, dominate
//! (the mask alone was a fifth of a tiny-shape training step). Here visibility is decided per
//! element while a tile is in cache, and every product goes straight to `gemm` (the crate
//! burn-flex uses, with its AVX-512 kernels):
//!
//! - forward, per block of query rows: `S = Q Kᵀ` over the visible key prefix, masked softmax,
//!   `O = P V`, and each row's log-sum-exp (kept by the autodiff node);
//! - backward with the log-sum-exp, in one pass per (head, query group) over blocks of keys:
//!   `P = exp(S − lse)`, `dS = P ∘ (dO Vᵀ − rowsum(dO ∘ O))`, `dV += Pᵀ dO`,
//!   `dK += dSᵀ Q / √d`, `dQ += dS K / √d` (FlashAttention-2's backward; the groups' partial
//!   `dK`, `dV` are summed at the end);
//! - a caller without the log-sum-exp gets it recomputed by the forward first.
//!
//! Blocks run in parallel on rayon's pool. Memory: one `[rows, keys]` tile pair per thread (and
//! per-group partial key gradients, linear in the length). Decoding uses these kernels too: even
//! with the copy of the cache to host vectors they beat flex's fused attention fed a dense mask.

use burn::backend::Flex;
use burn::tensor::{Bool, DType, Int, Tensor, TensorData, TensorPrimitive};
use burn_flex::FlexTensor;
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::attention::{blockwise_backward, blockwise_forward, BLOCK_SCORES};
use super::backend::ModelBackend;
use crate::train::optim::AdamWHyper;

/// Query rows per block (forward and backward pass 1) and per tile (pass 2).
const ROWS: usize = 64;
/// Keys per block in backward pass 2.
const KEYS: usize = 64;

impl ModelBackend for Flex {
    fn rms_norm(x: Tensor<Self, 2>, weight: Tensor<Self, 1>, eps: f64) -> Tensor<Self, 2> {
        if x.dtype() != DType::F32 || weight.dtype() != DType::F32 {
            return super::norm::rms_norm_ops(x, weight, eps);
        }
        let [rows, h] = x.dims();
        let device = x.device();
        let (x, w) = (buffer(x), buffer(weight));
        let (x, w) = (f32s(&x), f32s(&w));
        let mut out = vec![0f32; rows * h];
        out.par_chunks_mut(h)
            .zip(x.par_chunks(h))
            .for_each(|(o, x)| {
                let inv = inv_rms(x, eps);
                for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
                    *o = x * inv * w;
                }
            });
        Tensor::from_data(TensorData::new(out, [rows, h]), &device)
    }

    fn rms_norm_backward(
        x: Tensor<Self, 2>,
        weight: Tensor<Self, 1>,
        eps: f64,
        d: Tensor<Self, 2>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 1>) {
        if [x.dtype(), weight.dtype(), d.dtype()]
            .iter()
            .any(|t| *t != DType::F32)
        {
            return super::norm::rms_norm_backward_ops(x, weight, eps, d);
        }
        let [rows, h] = x.dims();
        let device = x.device();
        let (x, w, d) = (buffer(x), buffer(weight), buffer(d));
        let (x, w, d) = (f32s(&x), f32s(&w), f32s(&d));
        let mut dx = vec![0f32; rows * h];
        // Fixed blocks of rows, each with its partial `dw`, summed in order: the result does not
        // depend on how rayon schedules the blocks.
        const BLOCK: usize = 64;
        let partials: Vec<Vec<f32>> = dx
            .par_chunks_mut(BLOCK * h)
            .zip(x.par_chunks(BLOCK * h).zip(d.par_chunks(BLOCK * h)))
            .map(|(dx, (x, d))| {
                let mut dw = vec![0f32; h];
                let mut g = vec![0f32; h];
                for ((dx, x), d) in dx.chunks_mut(h).zip(x.chunks(h)).zip(d.chunks(h)) {
                    let inv = inv_rms(x, eps);
                    let mut proj = 0f32;
                    for i in 0..h {
                        let xhat = x[i] * inv;
                        dw[i] += d[i] * xhat;
                        g[i] = d[i] * w[i];
                        proj += g[i] * xhat;
                    }
                    let proj = proj / h as f32;
                    for i in 0..h {
                        dx[i] = (g[i] - x[i] * inv * proj) * inv;
                    }
                }
                dw
            })
            .collect();
        let mut dw = vec![0f32; h];
        for p in &partials {
            for (a, b) in dw.iter_mut().zip(p) {
                *a += b;
            }
        }
        (
            Tensor::from_data(TensorData::new(dx, [rows, h]), &device),
            Tensor::from_data(TensorData::new(dw, [h]), &device),
        )
    }

    fn swiglu(gate: Tensor<Self, 2>, up: Tensor<Self, 2>) -> Tensor<Self, 2> {
        if gate.dtype() != DType::F32 || up.dtype() != DType::F32 {
            return super::swiglu::swiglu_ops(gate, up);
        }
        let shape = gate.dims();
        let device = gate.device();
        let (g, u) = (buffer(gate), buffer(up));
        let (g, u) = (f32s(&g), f32s(&u));
        let mut out = vec![0f32; g.len()];
        out.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(|(o, (g, u))| simd::swiglu(o, g, u));
        Tensor::from_data(TensorData::new(out, shape), &device)
    }

    fn swiglu_backward(
        gate: Tensor<Self, 2>,
        up: Tensor<Self, 2>,
        d: Tensor<Self, 2>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>) {
        if [&gate, &up, &d].iter().any(|t| t.dtype() != DType::F32) {
            return super::swiglu::swiglu_backward_ops(gate, up, d);
        }
        let shape = gate.dims();
        let device = gate.device();
        let (g, u, d) = (buffer(gate), buffer(up), buffer(d));
        let (g, u, d) = (f32s(&g), f32s(&u), f32s(&d));
        let (mut dg, mut du) = (vec![0f32; g.len()], vec![0f32; g.len()]);
        dg.par_chunks_mut(CHUNK)
            .zip(du.par_chunks_mut(CHUNK))
            .zip(
                g.par_chunks(CHUNK)
                    .zip(u.par_chunks(CHUNK))
                    .zip(d.par_chunks(CHUNK)),
            )
            .for_each(|((dg, du), ((g, u), d))| simd::swiglu_grad(dg, du, g, u, d));
        let wrap = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, shape), &device);
        (wrap(dg), wrap(du))
    }

    fn rotary(x: Tensor<Self, 4>, cos: Tensor<Self, 4>, sin: Tensor<Self, 4>) -> Tensor<Self, 4> {
        flex_rotary(x, cos, sin)
    }

    fn sum_squares<const D: usize>(t: Tensor<Self, D>) -> Tensor<Self, 1> {
        if t.dtype() != DType::F32 {
            return t.square().sum();
        }
        let device = t.device();
        let t = buffer(t);
        let sum: f64 = f32s(&t)
            .par_chunks(CHUNK)
            .map(|c| simd::dot(c, c) as f64)
            .sum();
        Tensor::from_data(TensorData::new(vec![sum as f32], [1]), &device)
    }

    fn adamw_update<const D: usize>(
        param: Tensor<Self, D>,
        grad: Tensor<Self, D>,
        moments: Option<(Tensor<Self, D>, Tensor<Self, D>)>,
        hyper: &AdamWHyper,
    ) -> (Tensor<Self, D>, Tensor<Self, D>, Tensor<Self, D>) {
        flex_adamw(param, grad, moments, hyper)
    }

    fn head_chunk_stats(z: Tensor<Self, 2>, targets: Tensor<Self, 1, Int>) -> Tensor<Self, 2> {
        flex_head_chunk_stats(z, targets)
    }

    fn head_chunk_grad(
        z: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
        g: Tensor<Self, 2>,
    ) -> Tensor<Self, 2> {
        flex_head_chunk_grad(z, targets, g)
    }

    fn causal_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        key_valid: Tensor<Self, 2, Bool>,
        groups: usize,
    ) -> Tensor<Self, 4> {
        if q.dtype() != DType::F32 {
            return blockwise_forward(q, k, v, key_valid, groups, BLOCK_SCORES);
        }
        let shape = q.dims();
        let device = q.device();
        let p = Problem::new(q, k, v, key_valid, groups);
        let (out, _) = p.forward();
        Tensor::from_data(TensorData::new(out, shape), &device)
    }

    fn causal_attention_lse(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        key_valid: Tensor<Self, 2, Bool>,
        groups: usize,
    ) -> (Tensor<Self, 4>, Option<Tensor<Self, 3>>) {
        if q.dtype() != DType::F32 {
            return (
                blockwise_forward(q, k, v, key_valid, groups, BLOCK_SCORES),
                None,
            );
        }
        let shape = q.dims();
        let device = q.device();
        let p = Problem::new(q, k, v, key_valid, groups);
        let (out, lse) = p.forward();
        (
            Tensor::from_data(TensorData::new(out, shape), &device),
            Some(Tensor::from_data(
                TensorData::new(lse, [shape[0], shape[1], shape[2]]),
                &device,
            )),
        )
    }

    fn causal_attention_backward(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        key_valid: Tensor<Self, 2, Bool>,
        groups: usize,
        out: Tensor<Self, 4>,
        d_out: Tensor<Self, 4>,
        lse: Option<Tensor<Self, 3>>,
    ) -> (Tensor<Self, 4>, Tensor<Self, 4>, Tensor<Self, 4>) {
        if q.dtype() != DType::F32 {
            return blockwise_backward(q, k, v, key_valid, groups, BLOCK_SCORES, out, d_out);
        }
        let (q_shape, k_shape) = (q.dims(), k.dims());
        let device = q.device();
        let p = Problem::new(q, k, v, key_valid, groups);
        let (out, d_out) = (host(out), host(d_out));
        // Without the forward's log-sum-exp (a caller that did not keep it), recompute it.
        let lse = match lse {
            Some(l) => l.into_data().into_vec::<f32>().expect("f32 log-sum-exp"),
            None => p.forward().1,
        };
        let (dq, dk, dv) = p.backward(&out, &d_out, &lse);
        (
            Tensor::from_data(TensorData::new(dq, q_shape), &device),
            Tensor::from_data(TensorData::new(dk, k_shape), &device),
            Tensor::from_data(TensorData::new(dv, k_shape), &device),
        )
    }
}

/// The LM head's softmax part on the host ([`ModelBackend::head_chunk_stats`] and
/// [`ModelBackend::head_chunk_grad`]): each row in one pass with the vectorised exp, where the
/// tensor-op version materialises about eight `[rows, vocab]` temporaries. Returns the logits,
/// the targets and the vocabulary size.
fn head_rows(z: Tensor<Flex, 2>, targets: Tensor<Flex, 1, Int>) -> (Vec<f32>, Vec<usize>, usize) {
    let [_, vocab] = z.dims();
    let z = z.into_data().into_vec::<f32>().expect("f32 logits");
    let targets = targets
        .into_data()
        .iter::<i64>()
        .map(|t| t as usize)
        .collect();
    (z, targets, vocab)
}

/// One row's softmax: `e = exp(z - max z)` written to `e`; returns `(Σ e, lse, Σ p z)`.
fn row_softmax(z: &[f32], e: &mut [f32]) -> (f32, f32, f32) {
    let max = simd::max(z);
    e.copy_from_slice(z);
    let sum = simd::exp_sum(e, max);
    let mean = simd::dot(e, z) / sum;
    (sum, max + sum.ln(), mean)
}

fn flex_head_chunk_stats(z: Tensor<Flex, 2>, targets: Tensor<Flex, 1, Int>) -> Tensor<Flex, 2> {
    if z.dtype() != DType::F32 {
        return super::head::chunk_stats_ops(z, targets);
    }
    let device = z.device();
    let (z, targets, vocab) = head_rows(z, targets);
    let n = targets.len();
    let mut out = vec![0f32; 2 * n];
    out.par_chunks_mut(2)
        .zip(z.par_chunks(vocab))
        .zip(targets.par_iter())
        .for_each(|((o, row), &t)| {
            let mut e = scratch(0, vocab);
            let (_, lse, mean) = row_softmax(row, &mut e);
            o[0] = row[t] - lse;
            o[1] = lse - mean;
        });
    Tensor::from_data(TensorData::new(out, [n, 2]), &device)
}

fn flex_head_chunk_grad(
    z: Tensor<Flex, 2>,
    targets: Tensor<Flex, 1, Int>,
    g: Tensor<Flex, 2>,
) -> Tensor<Flex, 2> {
    if z.dtype() != DType::F32 {
        return super::head::chunk_grad_ops(z, targets, g);
    }
    let g = g.into_data().into_vec::<f32>().expect("f32 gradients");
    let device = z.device();
    let (z, targets, vocab) = head_rows(z, targets);
    let n = targets.len();
    let mut dz = vec![0f32; n * vocab];
    dz.par_chunks_mut(vocab)
        .zip(z.par_chunks(vocab))
        .zip(targets.par_iter().zip(g.par_chunks(2)))
        .for_each(|((d, row), (&t, g))| {
            let (sum, _, mean) = row_softmax(row, d);
            // d = e; dz = -(e / sum) (g_H (z - mean) + g_logp), plus g_logp at the target.
            simd::head_grad(d, row, 1.0 / sum, g[1], g[0] - g[1] * mean);
            d[t] += g[0];
        });
    Tensor::from_data(TensorData::new(dz, [n, vocab]), &device)
}

/// AdamW on the host ([`ModelBackend::adamw_update`]): one pass reads `p`, `g`, `m`, `v` and
/// writes `p`, `m`, `v` in place (copying first only a buffer that is shared), where the tensor-op
/// version makes about fourteen passes with a fresh buffer each. Same f32 operations in the same
/// order, so the results are burn's.
#[allow(clippy::type_complexity)]
fn flex_adamw<const D: usize>(
    param: Tensor<Flex, D>,
    grad: Tensor<Flex, D>,
    moments: Option<(Tensor<Flex, D>, Tensor<Flex, D>)>,
    h: &AdamWHyper,
) -> (Tensor<Flex, D>, Tensor<Flex, D>, Tensor<Flex, D>) {
    let all_f32 = [&param, &grad]
        .into_iter()
        .chain(moments.iter().flat_map(|(m, v)| [m, v]))
        .all(|t| t.dtype() == DType::F32);
    if !all_f32 {
        return crate::train::optim::adamw_update_ops(param, grad, moments, h);
    }
    let shape = param.shape();
    // Written in place below: `storage_mut` copies a buffer only if it is shared.
    let mut p = buffer(param);
    let g = buffer(grad);
    let (mut m, mut v) = match moments {
        Some((m, v)) => (buffer(m), buffer(v)),
        None => (
            FlexTensor::zeros(shape.clone(), DType::F32),
            FlexTensor::zeros(shape, DType::F32),
        ),
    };
    let (bc1, bc2) = h.bias_corrections();
    let k = simd::AdamW {
        beta_1: h.beta_1,
        beta_2: h.beta_2,
        f1: 1.0 - h.beta_1,
        f2: 1.0 - h.beta_2,
        bc1,
        bc2,
        epsilon: h.epsilon,
        keep: (1.0 - h.lr * h.weight_decay as f64) as f32,
        lr: h.lr as f32,
    };
    let gs = f32s(&g);
    p.storage_mut::<f32>()
        .par_chunks_mut(CHUNK)
        .zip(m.storage_mut::<f32>().par_chunks_mut(CHUNK))
        .zip(v.storage_mut::<f32>().par_chunks_mut(CHUNK))
        .zip(gs.par_chunks(CHUNK))
        .for_each(|(((p, m), v), g)| simd::adamw(p, m, v, g, &k));
    let wrap = |t: FlexTensor| Tensor::from_primitive(TensorPrimitive::Float(t));
    (wrap(p), wrap(m), wrap(v))
}

/// RoPE on the host ([`ModelBackend::rotary`]): one pass that reads each row of `x` where it
/// lies (the head-major view of the projection's output is not contiguous) and writes the
/// rotated rows contiguously, where the tensor-op version slices, negates, concatenates and makes
/// three broadcast element-wise passes over strided memory.
fn flex_rotary(x: Tensor<Flex, 4>, cos: Tensor<Flex, 4>, sin: Tensor<Flex, 4>) -> Tensor<Flex, 4> {
    let [b, h, s, d] = x.dims();
    let table_ok = |t: &Tensor<Flex, 4>| t.dims() == [b, 1, s, d] && t.dtype() == DType::F32;
    if x.dtype() != DType::F32 || d % 2 != 0 || !table_ok(&cos) || !table_ok(&sin) {
        return super::rope::apply_rotary(x, cos, sin);
    }
    let device = x.device();
    let mut xt = x.into_primitive().tensor();
    if xt.layout().strides()[3] != 1 || !xt.layout().has_positive_strides() {
        xt = xt.to_contiguous();
    }
    let strides: Vec<usize> = xt.layout().strides().iter().map(|&v| v as usize).collect();
    let offset = xt.layout().start_offset();
    let xs = xt.storage::<f32>();
    let (cos, sin) = (buffer(cos), buffer(sin));
    let (cos, sin) = (f32s(&cos), f32s(&sin));
    let half = d / 2;
    let mut out = vec![0f32; b * h * s * d];
    out.par_chunks_mut(s * d).enumerate().for_each(|(bh, o)| {
        let (bi, hi) = (bh / h, bh % h);
        for (si, o) in o.chunks_exact_mut(d).enumerate() {
            let at = offset + bi * strides[0] + hi * strides[1] + si * strides[2];
            let row = &xs[at..at + d];
            let t = (bi * s + si) * d;
            simd::rotate_half(o, row, &cos[t..t + d], &sin[t..t + d], half);
        }
    });
    Tensor::from_data(TensorData::new(out, [b, h, s, d]), &device)
}

/// Elements per parallel task of the element-wise kernels.
const CHUNK: usize = 1 << 15;

/// A float tensor's storage as a contiguous buffer: the tensor's own when it is contiguous
/// (shared or not), a copy only for a strided view. Read it with `f32s`.
fn buffer<const D: usize>(t: Tensor<Flex, D>) -> FlexTensor {
    t.into_primitive().tensor().to_contiguous()
}

/// The f32 elements of a [`buffer`].
fn f32s(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32 buffer")
}

/// `1 / sqrt(mean(x²) + eps)` of one row.
fn inv_rms(x: &[f32], eps: f64) -> f32 {
    let ms = simd::dot(x, x) / x.len() as f32;
    1.0 / (ms + eps as f32).sqrt()
}

fn host(t: Tensor<Flex, 4>) -> Vec<f32> {
    t.into_data()
        .into_vec::<f32>()
        .expect("f32 attention tensor")
}

/// One attention call on host memory: `q` `[bh, rows, d]` (rows: `groups` stacked query heads of
/// `q_len` positions each), `k`, `v` `[bh, k_len, d]`, `valid` `[batch, k_len]`.
struct Problem {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Padding key indices of each batch row, ascending.
    padding: Vec<Vec<usize>>,
    kv_heads: usize,
    bh: usize,
    rows: usize,
    q_len: usize,
    k_len: usize,
    d: usize,
    scale: f32,
}

impl Problem {
    fn new(
        q: Tensor<Flex, 4>,
        k: Tensor<Flex, 4>,
        v: Tensor<Flex, 4>,
        key_valid: Tensor<Flex, 2, Bool>,
        groups: usize,
    ) -> Self {
        let [b, kv_heads, rows, d] = q.dims();
        let k_len = k.dims()[2];
        assert_eq!(k.dims(), [b, kv_heads, k_len, d], "attention: key shape");
        assert_eq!(v.dims(), k.dims(), "attention: value shape");
        assert_eq!(key_valid.dims(), [b, k_len], "attention: key_valid shape");
        assert!(groups > 0 && rows % groups == 0, "attention: query rows");
        let q_len = rows / groups;
        assert!(q_len <= k_len, "attention: more queries than keys");
        let valid = key_valid
            .into_data()
            .into_vec::<bool>()
            .expect("bool key mask");
        let padding = valid
            .chunks(k_len)
            .map(|row| (0..k_len).filter(|&j| !row[j]).collect())
            .collect();
        Self {
            q: host(q),
            k: host(k),
            v: host(v),
            padding,
            kv_heads,
            bh: b * kv_heads,
            rows,
            q_len,
            k_len,
            d,
            scale: 1.0 / (d as f32).sqrt(),
        }
    }

    /// Position of stacked query row `r`.
    fn pos(&self, r: usize) -> usize {
        self.k_len - self.q_len + r % self.q_len
    }

    /// Padding keys of head `bh`'s batch row.
    fn padding(&self, bh: usize) -> &[usize] {
        &self.padding[bh / self.kv_heads]
    }

    /// Sets the entries of `row` (keys `j0..j0 + row.len()`) that the query at position `p`
    /// may not see to `fill`: keys after `p` (causal) and padding keys other than `p`.
    fn mask_row(&self, bh: usize, p: usize, j0: usize, row: &mut [f32], fill: f32) {
        let w = row.len();
        if p + 1 < j0 + w {
            row[(p + 1).saturating_sub(j0)..].fill(fill);
        }
        let padding = self.padding(bh);
        let first = padding.partition_point(|&j| j < j0);
        for &j in padding[first..].iter().take_while(|&&j| j < p.min(j0 + w)) {
            row[j - j0] = fill;
        }
    }

    /// Keys `0..end` seen by any row of `r0..r1`.
    fn key_end(&self, r0: usize, r1: usize) -> usize {
        (r0..r1).map(|r| self.pos(r) + 1).max().unwrap_or(0)
    }

    /// `s[n, kend] = scale · q[r0..r0+n] k[0..kend]ᵀ` for head `bh`, masked entries −∞.
    fn scores(&self, bh: usize, r0: usize, n: usize, kend: usize, s: &mut [f32]) {
        let d = self.d;
        let q = &self.q[(bh * self.rows + r0) * d..];
        let k = &self.k[bh * self.k_len * d..];
        matmul(
            n,
            kend,
            d,
            s,
            kend,
            false,
            View::rows(q, d),
            View::cols(k, d),
            self.scale,
        );
        for i in 0..n {
            let row = &mut s[i * kend..(i + 1) * kend];
            self.mask_row(bh, self.pos(r0 + i), 0, row, f32::NEG_INFINITY);
        }
    }

    /// Output `[bh, rows, d]` and the log-sum-exp of every row.
    fn forward(&self) -> (Vec<f32>, Vec<f32>) {
        let (d, rows) = (self.d, self.rows);
        let mut out = vec![0f32; self.bh * rows * d];
        let mut lse = vec![0f32; self.bh * rows];
        out.par_chunks_mut(ROWS * d)
            .zip(lse.par_chunks_mut(ROWS))
            .enumerate()
            .flat_map_iter(|(i, c)| self.split_rows(i, c))
            .for_each(|(bh, r0, (out, lse))| {
                let n = lse.len();
                let kend = self.key_end(r0, r0 + n);
                let mut s = scratch(0, n * kend);
                self.scores(bh, r0, n, kend, &mut s);
                for (i, row) in s.chunks_mut(kend).enumerate() {
                    lse[i] = softmax_in_place(row);
                }
                let v = &self.v[bh * self.k_len * d..];
                matmul(
                    n,
                    d,
                    kend,
                    out,
                    d,
                    false,
                    View::rows(&s, kend),
                    View::rows(v, d),
                    1.0,
                );
            });
        (out, lse)
    }

    /// Chunk `i` of `ROWS` rows over all heads, split where it crosses a head boundary so that
    /// every piece is `(head, first row, (out rows, lse rows))` of one head.
    #[allow(clippy::type_complexity)]
    fn split_rows<'a>(
        &self,
        i: usize,
        (out, lse): (&'a mut [f32], &'a mut [f32]),
    ) -> Vec<(usize, usize, (&'a mut [f32], &'a mut [f32]))> {
        let (d, rows) = (self.d, self.rows);
        let mut pieces = Vec::new();
        let mut global = i * ROWS;
        let (mut out, mut lse) = (out, lse);
        while !lse.is_empty() {
            let (bh, r0) = (global / rows, global % rows);
            let n = (rows - r0).min(lse.len());
            let (o_head, o_rest) = out.split_at_mut(n * d);
            let (l_head, l_rest) = lse.split_at_mut(n);
            pieces.push((bh, r0, (o_head, l_head)));
            out = o_rest;
            lse = l_rest;
            global += n;
        }
        pieces
    }

    /// `D_r = dO_r · O_r` of every row.
    fn deltas(&self, out: &[f32], d_out: &[f32]) -> Vec<f32> {
        d_out
            .par_chunks(self.d)
            .zip(out.par_chunks(self.d))
            .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x * y).sum())
            .collect()
    }

    /// `(dq, dk, dv)` in one pass over the key blocks, given each row's log-sum-exp from the
    /// forward, so one exponential per visible score. One task per (head, query group) owns its
    /// rows of `dq` and partial `dk`, `dv`, summed over the groups at the end.
    fn backward(&self, out: &[f32], d_out: &[f32], lse: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (d, rows, t) = (self.d, self.rows, self.q_len);
        let groups = rows / t;
        let delta = self.deltas(out, d_out);
        let mut dq = vec![0f32; self.bh * rows * d];
        let head = self.k_len * d;
        let mut dk_parts = vec![0f32; self.bh * groups * head];
        let mut dv_parts = vec![0f32; self.bh * groups * head];
        dq.par_chunks_mut(t * d)
            .zip(dk_parts.par_chunks_mut(head))
            .zip(dv_parts.par_chunks_mut(head))
            .enumerate()
            .for_each(|(task, ((dq, dk), dv))| {
                let (bh, g) = (task / groups, task % groups);
                self.group_backward(bh, g, dq, dk, dv, d_out, lse, &delta);
            });
        let sum_groups = |parts: Vec<f32>| -> Vec<f32> {
            if groups == 1 {
                return parts;
            }
            let mut total = vec![0f32; self.bh * head];
            total
                .par_chunks_mut(head)
                .zip(parts.par_chunks(groups * head))
                .for_each(|(acc, parts)| {
                    for part in parts.chunks(head) {
                        for (a, b) in acc.iter_mut().zip(part) {
                            *a += b;
                        }
                    }
                });
            total
        };
        (dq, sum_groups(dk_parts), sum_groups(dv_parts))
    }

    /// One (head, query group) task of [`Self::backward`]: `dq` holds the group's
    /// `q_len` rows, `dk`, `dv` its partial key gradients.
    #[allow(clippy::too_many_arguments)]
    fn group_backward(
        &self,
        bh: usize,
        g: usize,
        dq: &mut [f32],
        dk: &mut [f32],
        dv: &mut [f32],
        d_out: &[f32],
        lse: &[f32],
        delta: &[f32],
    ) {
        let (d, t) = (self.d, self.q_len);
        let offset = self.k_len - t;
        let mut s = scratch(0, ROWS * KEYS);
        let mut dp = scratch(1, ROWS * KEYS);
        for j0 in (0..self.k_len).step_by(KEYS) {
            let w = KEYS.min(self.k_len - j0);
            let kb = &self.k[(bh * self.k_len + j0) * d..];
            let vb = &self.v[(bh * self.k_len + j0) * d..];
            // Rows of the group whose position is at least j0 (earlier ones see none of these).
            let mut i0 = j0.saturating_sub(offset);
            while i0 < t {
                let n = ROWS.min(t - i0);
                let r0 = g * t + i0;
                let base = bh * self.rows + r0;
                let (s, dp) = (&mut s[..n * w], &mut dp[..n * w]);
                let q = &self.q[base * d..];
                let dob = &d_out[base * d..];
                let (kb_v, vb_v) = (View::rows(kb, d), View::rows(vb, d));
                matmul(n, w, d, s, w, false, View::rows(q, d), kb_v.t(), self.scale);
                matmul(n, w, d, dp, w, false, View::rows(dob, d), vb_v.t(), 1.0);
                for i in 0..n {
                    let (l, dl) = (lse[base + i], delta[base + i]);
                    let (srow, dprow) = (&mut s[i * w..(i + 1) * w], &mut dp[i * w..(i + 1) * w]);
                    self.mask_row(bh, self.pos(r0 + i), j0, srow, f32::NEG_INFINITY);
                    simd::exp_sum(srow, l);
                    simd::times_shifted(dprow, srow, dl);
                }
                let (p, ds) = (View::rows(s, w), View::rows(dp, w));
                // dV += Pᵀ dO, dK += dSᵀ Q / √d, dQ += dS K / √d.
                matmul(
                    w,
                    d,
                    n,
                    &mut dv[j0 * d..],
                    d,
                    true,
                    p.t(),
                    View::rows(dob, d),
                    1.0,
                );
                matmul(
                    w,
                    d,
                    n,
                    &mut dk[j0 * d..],
                    d,
                    true,
                    ds.t(),
                    View::rows(q, d),
                    self.scale,
                );
                matmul(n, d, w, &mut dq[i0 * d..], d, true, ds, kb_v, self.scale);
                i0 += n;
            }
        }
    }
}

/// A matrix operand in a slice: element `(i, j)` at `i * rs + j * cs`.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    /// Row-major rows of `ld` elements.
    fn rows(data: &'a [f32], ld: usize) -> Self {
        Self {
            data,
            rs: ld,
            cs: 1,
        }
    }

    /// Row-major rows of `ld` elements, read transposed.
    fn cols(data: &'a [f32], ld: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: ld,
        }
    }

    /// The transpose.
    fn t(self) -> Self {
        Self {
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Whether an `m x n` matrix fits.
    fn holds(&self, m: usize, n: usize) -> bool {
        m == 0 || n == 0 || (m - 1) * self.rs + (n - 1) * self.cs < self.data.len()
    }
}

/// `dst[m x n]` (row-major, rows of `ld`) `= scale · a[m x k] · b[k x n]`, added to `dst` when
/// `accumulate`: `gemm`, with every operand's extent checked.
#[allow(clippy::too_many_arguments)]
fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    ld: usize,
    accumulate: bool,
    a: View<'_>,
    b: View<'_>,
    scale: f32,
) {
    assert!(
        a.holds(m, k) && b.holds(k, n) && View::rows(dst, ld).holds(m, n),
        "attention matmul out of bounds"
    );
    // SAFETY: the assertion keeps every element gemm reads or writes inside its slice.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ld as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

thread_local! {
    /// Each worker thread's two score tiles, kept between blocks: allocating them per block
    /// (a megabyte each at 4K keys) costs page faults.
    static SCRATCH: [std::cell::Cell<Vec<f32>>; 2] = Default::default();
}

/// This thread's scratch buffer `which`, with `len` elements (contents unspecified); give it back
/// by dropping the guard.
fn scratch(which: usize, len: usize) -> Scratch {
    let mut buf = SCRATCH.with(|s| s[which].take());
    buf.resize(len, 0.0);
    Scratch { which, buf }
}

/// A scratch buffer on loan from [`SCRATCH`].
struct Scratch {
    which: usize,
    buf: Vec<f32>,
}

impl std::ops::Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf
    }
}

impl std::ops::DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        SCRATCH.with(|s| s[self.which].set(buf));
    }
}

/// Softmax of `row` in place (masked entries are −∞; a row always has one visible entry);
/// returns the log-sum-exp.
fn softmax_in_place(row: &mut [f32]) -> f32 {
    let max = simd::max(row);
    let sum = simd::exp_sum(row, max);
    simd::scale(row, 1.0 / sum);
    max + sum.ln()
}

/// Element-wise loops over score rows, compiled for AVX-512 or AVX2 when the CPU has them (the
/// crate itself targets baseline x86-64) and written with independent lanes so they vectorise.
mod simd {
    const LANES: usize = 16;

    /// `e^x` for `x <= 0` (or −∞, giving 0) to a few ulp: `2^n · p(r)` with
    /// `x = n ln 2 + r`, `|r| <= ln 2 / 2`, and a degree-6 Taylor polynomial for `e^r`. `n` is
    /// rounded by adding 1.5 · 2^23 (its bits then hold `n`), so no float-to-int conversion
    /// stops the loop from vectorising.
    #[inline(always)]
    fn exp(x: f32) -> f32 {
        const SHIFTER: f32 = 12_582_912.0;
        let x = x.max(-87.0);
        let t = x * std::f32::consts::LOG2_E + SHIFTER;
        let n = t - SHIFTER;
        // Cody-Waite: ln 2 in two parts, so that n·ln 2 is exact in the first.
        let r = (x - n * 0.693_359_4) - n * -2.121_944_4e-4;
        let p = 1.0
            + r * (1.0
                + r * (0.5
                    + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
        let bits = t
            .to_bits()
            .wrapping_sub(SHIFTER.to_bits())
            .wrapping_add(127)
            << 23;
        let y = p * f32::from_bits(bits);
        if x <= -87.0 {
            0.0
        } else {
            y
        }
    }

    macro_rules! dispatch {
        ($name:ident, $generic:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
            pub fn $name($($arg: $ty),*) -> $ret {
                #[cfg(target_arch = "x86_64")]
                {
                    #[target_feature(enable = "avx512f")]
                    unsafe fn v4($($arg: $ty),*) -> $ret {
                        $generic($($arg),*)
                    }
                    #[target_feature(enable = "avx2,fma")]
                    unsafe fn v3($($arg: $ty),*) -> $ret {
                        $generic($($arg),*)
                    }
                    if std::arch::is_x86_feature_detected!("avx512f") {
                        // SAFETY: the CPU has AVX-512F.
                        return unsafe { v4($($arg),*) };
                    }
                    if std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                    {
                        // SAFETY: the CPU has AVX2 and FMA.
                        return unsafe { v3($($arg),*) };
                    }
                }
                $generic($($arg),*)
            }
        };
    }

    #[inline(always)]
    fn max_generic(row: &[f32]) -> f32 {
        let mut acc = [f32::NEG_INFINITY; LANES];
        let chunks = row.chunks_exact(LANES);
        let tail = chunks.remainder();
        for c in chunks {
            for i in 0..LANES {
                acc[i] = acc[i].max(c[i]);
            }
        }
        tail.iter()
            .chain(&acc)
            .copied()
            .fold(f32::NEG_INFINITY, f32::max)
    }

    #[inline(always)]
    fn exp_sum_generic(row: &mut [f32], shift: f32) -> f32 {
        let mut acc = [0f32; LANES];
        let mut chunks = row.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for i in 0..LANES {
                c[i] = exp(c[i] - shift);
                acc[i] += c[i];
            }
        }
        let mut sum: f32 = acc.iter().sum();
        for x in chunks.into_remainder() {
            *x = exp(*x - shift);
            sum += *x;
        }
        sum
    }

    #[inline(always)]
    fn scale_generic(row: &mut [f32], factor: f32) {
        for x in row.iter_mut() {
            *x *= factor;
        }
    }

    /// `a ← b (a − delta)`: with `a` the upstream gradients of probabilities `b`, the softmax
    /// backward `dS = P (dP − D)`.
    #[inline(always)]
    fn times_shifted_generic(a: &mut [f32], b: &[f32], delta: f32) {
        for (x, y) in a.iter_mut().zip(b) {
            *x = *y * (*x - delta);
        }
    }

    #[inline(always)]
    fn dot_generic(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; LANES];
        let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        let tail: f32 = ca
            .remainder()
            .iter()
            .zip(cb.remainder())
            .map(|(x, y)| x * y)
            .sum();
        for (x, y) in ca.zip(cb) {
            for i in 0..LANES {
                acc[i] += x[i] * y[i];
            }
        }
        acc.iter().sum::<f32>() + tail
    }

    /// `e ← −(e · inv_sum) (g_h z + c)`: the LM head's `∂/∂z` from a row's exponentials `e`
    /// (`c = g_logp − g_h Σ p z`).
    #[inline(always)]
    fn head_grad_generic(e: &mut [f32], z: &[f32], inv_sum: f32, g_h: f32, c: f32) {
        for (x, z) in e.iter_mut().zip(z) {
            *x = -(*x * inv_sum) * (g_h * z + c);
        }
    }

    /// The constants of [`adamw`]: `f1 = 1 - beta_1`, `f2 = 1 - beta_2`, `bc1`/`bc2` the bias
    /// corrections, `keep = 1 - lr · weight_decay`.
    pub struct AdamW {
        pub beta_1: f32,
        pub beta_2: f32,
        pub f1: f32,
        pub f2: f32,
        pub bc1: f32,
        pub bc2: f32,
        pub epsilon: f32,
        pub keep: f32,
        pub lr: f32,
    }

    /// One AdamW update of a slice, in burn's order of f32 operations (no fused multiply-add:
    /// Rust does not contract `a * b + c`).
    #[inline(always)]
    fn adamw_generic(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], k: &AdamW) {
        for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
            *m = *m * k.beta_1 + g * k.f1;
            *v = *v * k.beta_2 + g * g * k.f2;
            let delta = (*m / k.bc1) / ((*v / k.bc2).sqrt() + k.epsilon);
            *p = *p * k.keep - delta * k.lr;
        }
    }

    /// `o = x cos + [-x₂, x₁] sin` for one row split in halves at `half`.
    #[inline(always)]
    fn rotate_half_generic(o: &mut [f32], x: &[f32], cos: &[f32], sin: &[f32], half: usize) {
        let (o1, o2) = o.split_at_mut(half);
        let (x1, x2) = x.split_at(half);
        let (c1, c2) = cos.split_at(half);
        let (s1, s2) = sin.split_at(half);
        for i in 0..half {
            o1[i] = x1[i] * c1[i] + -x2[i] * s1[i];
            o2[i] = x2[i] * c2[i] + x1[i] * s2[i];
        }
    }

    /// `σ(x)` through the vectorised `exp` of a non-positive argument.
    #[inline(always)]
    fn sigmoid(x: f32) -> f32 {
        let e = exp(-x.abs());
        let r = 1.0 / (1.0 + e);
        if x >= 0.0 {
            r
        } else {
            e * r
        }
    }

    /// `o = silu(g) u`.
    #[inline(always)]
    fn swiglu_generic(o: &mut [f32], g: &[f32], u: &[f32]) {
        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
            *o = g * sigmoid(g) * u;
        }
    }

    /// `du = d silu(g)`, `dg = d u σ(g) (1 + g (1 − σ(g)))`.
    #[inline(always)]
    fn swiglu_grad_generic(dg: &mut [f32], du: &mut [f32], g: &[f32], u: &[f32], d: &[f32]) {
        for ((((dg, du), &g), &u), &d) in dg.iter_mut().zip(du.iter_mut()).zip(g).zip(u).zip(d) {
            let s = sigmoid(g);
            *du = d * g * s;
            *dg = d * u * s * (1.0 + g * (1.0 - s));
        }
    }

    dispatch!(swiglu, swiglu_generic, (o: &mut [f32], g: &[f32], u: &[f32]) -> ());
    dispatch!(swiglu_grad, swiglu_grad_generic, (dg: &mut [f32], du: &mut [f32], g: &[f32], u: &[f32], d: &[f32]) -> ());
    dispatch!(rotate_half, rotate_half_generic, (o: &mut [f32], x: &[f32], cos: &[f32], sin: &[f32], half: usize) -> ());
    dispatch!(adamw, adamw_generic, (p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], k: &AdamW) -> ());
    dispatch!(max, max_generic, (row: &[f32]) -> f32);
    dispatch!(exp_sum, exp_sum_generic, (row: &mut [f32], shift: f32) -> f32);
    dispatch!(scale, scale_generic, (row: &mut [f32], factor: f32) -> ());
    dispatch!(dot, dot_generic, (a: &[f32], b: &[f32]) -> f32);
    dispatch!(head_grad, head_grad_generic, (e: &mut [f32], z: &[f32], inv_sum: f32, g_h: f32, c: f32) -> ());
    dispatch!(times_shifted, times_shifted_generic, (a: &mut [f32], b: &[f32], delta: f32) -> ());
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// The backward gives the same gradients with the forward's log-sum-exp and without it
    /// (recomputed), with left padding, grouped queries and a cache offset.
    #[test]
    fn backward_with_and_without_the_forward_lse_agree() {
        let device = Default::default();
        let (b, h, g, t, l, d) = (2, 2, 3, 70, 75, 8);
        let normal = Distribution::Normal(0.0, 1.0);
        let q = Tensor::<Flex, 4>::random([b, h, g * t, d], normal, &device);
        let k = Tensor::<Flex, 4>::random([b, h, l, d], normal, &device);
        let v = Tensor::<Flex, 4>::random([b, h, l, d], normal, &device);
        let d_out = Tensor::<Flex, 4>::random([b, h, g * t, d], normal, &device);
        let valid: Vec<bool> = (0..b * l).map(|i| i / l == 1 || i % l >= 4).collect();
        let valid = Tensor::<Flex, 2, Bool>::from_data(TensorData::new(valid, [b, l]), &device);
        let (out, lse) =
            Flex::causal_attention_lse(q.clone(), k.clone(), v.clone(), valid.clone(), g);
        assert!(lse.is_some());
        let run = |lse| {
            Flex::causal_attention_backward(
                q.clone(),
                k.clone(),
                v.clone(),
                valid.clone(),
                g,
                out.clone(),
                d_out.clone(),
                lse,
            )
        };
        let (a, b_) = (run(lse), run(None));
        for (x, y) in [(a.0, b_.0), (a.1, b_.1), (a.2, b_.2)] {
            x.into_data()
                .assert_approx_eq::<f32>(&y.into_data(), burn::tensor::Tolerance::absolute(1e-5));
        }
    }

    /// The host sum of squares (the gradient-norm clip's parts) is burn's `square().sum()`, also
    /// on a non-contiguous view.
    #[test]
    fn sum_squares_matches_ops() {
        let device = Default::default();
        let t = Tensor::<Flex, 2>::random([300, 517], Distribution::Normal(0.0, 2.0), &device);
        for t in [t.clone(), t.transpose()] {
            let want = t.clone().square().sum().into_scalar() as f64;
            let got = Flex::sum_squares(t).into_scalar() as f64;
            assert!((got - want).abs() < 1e-5 * want, "{got} vs {want}");
        }
    }

    /// The fused AdamW gives burn's tensor-op results bit for bit (first step and later, with
    /// weight decay), and a buffer that something else still holds is copied, not overwritten.
    #[test]
    fn fused_adamw_is_burns_adamw() {
        let device = Default::default();
        let normal = Distribution::Normal(0.0, 1.0);
        let shape = [37, 1029];
        let h = |time| AdamWHyper {
            lr: 3e-3,
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.1,
            time,
        };
        let p0 = Tensor::<Flex, 2>::random(shape, normal, &device);
        let kept = p0.clone().into_data();
        let (mut pf, mut pt) = (p0.clone(), p0.clone());
        let (mut sf, mut st) = (None, None);
        for time in 1..=3 {
            let g = Tensor::<Flex, 2>::random(shape, normal, &device).mul_scalar(time as f32);
            let (p, m, v) = Flex::adamw_update(pf, g.clone(), sf, &h(time));
            let (q, m2, v2) = crate::train::optim::adamw_update_ops(pt, g, st, &h(time));
            for (a, b) in [(&p, &q), (&m, &m2), (&v, &v2)] {
                assert_eq!(a.clone().into_data(), b.clone().into_data(), "step {time}");
            }
            (pf, sf, pt, st) = (p, Some((m, v)), q, Some((m2, v2)));
        }
        assert_ne!(pf.into_data(), kept);
        assert_eq!(
            p0.into_data(),
            kept,
            "a shared parameter buffer was written"
        );
    }

    /// Copying a permuted (and sliced) view to contiguous memory, the path of the vendored
    /// burn-flex patch 2 (`vendor/burn-flex/LONGRL-PATCHES.md`), puts every element where the
    /// index arithmetic says: 2D and higher layouts, unit-stride last dims (row copies), strided
    /// ones (tiled copies), offsets.
    #[test]
    fn permuted_views_copy_to_the_right_places() {
        let device = Default::default();
        let dims = [2usize, 3, 4, 5];
        let n: usize = dims.iter().product();
        let values: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let t = Tensor::<Flex, 4>::from_data(TensorData::new(values, dims), &device);
        let strides = [60usize, 20, 5, 1];
        for (axes, narrow) in [
            ([0, 2, 1, 3], None),
            ([1, 0, 2, 3], None),
            ([3, 1, 0, 2], None),
            ([2, 0, 3, 1], None),
            ([0, 2, 1, 3], Some((2, 1, 2))),
            ([1, 2, 0, 3], Some((3, 2, 3))),
            // Collapses to 2D rows of 3 with a row stride of 5.
            ([0, 1, 2, 3], Some((3, 1, 3))),
        ] {
            let (mut shape, mut start) = (dims, 0);
            let mut view = t.clone();
            if let Some((dim, first, len)) = narrow {
                view = view.narrow(dim, first, len);
                shape[dim] = len;
                start = first * strides[dim];
            }
            let view = view.permute(axes);
            let out_shape: Vec<usize> = axes.iter().map(|&a| shape[a]).collect();
            let got = view
                .reshape([out_shape.iter().product::<usize>()])
                .into_data()
                .into_vec::<f32>()
                .unwrap();
            let mut want = Vec::new();
            for i0 in 0..out_shape[0] {
                for i1 in 0..out_shape[1] {
                    for i2 in 0..out_shape[2] {
                        for i3 in 0..out_shape[3] {
                            let index = [i0, i1, i2, i3];
                            let at: usize = (0..4).map(|k| index[k] * strides[axes[k]]).sum();
                            want.push((start + at) as f32);
                        }
                    }
                }
            }
            assert_eq!(got, want, "axes {axes:?}, narrow {narrow:?}");
        }
    }

    #[test]
    fn vectorised_exp_matches_std() {
        let xs: Vec<f32> = (0..2000).map(|i| -(i as f32) * 0.05).collect();
        let mut ys = xs.clone();
        ys.push(f32::NEG_INFINITY);
        let sum = simd::exp_sum(&mut ys, 0.0);
        assert_eq!(ys.pop(), Some(0.0));
        let mut want_sum = 0f64;
        for (x, y) in xs.iter().zip(&ys) {
            let want = (*x as f64).exp();
            want_sum += want;
            assert!(
                (*y as f64 - want).abs() <= 4.0 * f32::EPSILON as f64 * want + 1e-37,
                "exp({x}) = {y}, want {want}"
            );
        }
        assert!((sum as f64 - want_sum).abs() < 1e-5 * want_sum);
    }
}
