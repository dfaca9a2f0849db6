//! burn-flex's implementation of [`ModelBackend`]: host kernels on f32 memory where burn's
//! decomposed ops make many passes (each with a fresh buffer) over the same data. Besides the
//! attention (described below, in `attention.rs`): the LM head's softmax part (one pass per
//! row), RoPE (one pass that reads the head-major view in place), AdamW (one in-place pass over
//! parameter, gradient and moments) and the gradient's sum of squares. Every kernel falls back to the tensor-op version on other
//! dtypes. The element-wise loops they share are in `simd.rs`.
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

mod attention;
mod simd;

use burn::backend::Flex;
use burn::tensor::{Bool, DType, Int, Tensor, TensorData, TensorPrimitive};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::attention::{blockwise_backward, blockwise_forward, BLOCK_SCORES};
use super::backend::ModelBackend;
use super::AdamWHyper;
use attention::{host, scratch, Problem};

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
        return super::adamw::adamw_update_ops(param, grad, moments, h);
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
            let (q, m2, v2) = crate::kernels::adamw::adamw_update_ops(pt, g, st, &h(time));
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
