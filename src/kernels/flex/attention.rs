//! The attention kernels of [`crate::kernels::ModelBackend::causal_attention`] on host memory, tile by tile
//! (see the parent module's docs): [`Problem`] holds one call's operands, its `forward` and
//! `backward` run the blocks in parallel; the products go to `gemm` through [`matmul`].

use burn::backend::Flex;
use burn::tensor::{Bool, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::simd;

/// Query rows per block (forward and backward pass 1) and per tile (pass 2).
const ROWS: usize = 64;
/// Keys per block in backward pass 2.
const KEYS: usize = 64;

/// An attention operand `[batch, heads, len, d]` as host f32s.
pub(super) fn host(t: Tensor<Flex, 4>) -> Vec<f32> {
    t.into_data()
        .into_vec::<f32>()
        .expect("f32 attention tensor")
}

/// One attention call on host memory: `q` `[bh, rows, d]` (rows: `groups` stacked query heads of
/// `q_len` positions each), `k`, `v` `[bh, k_len, d]`, `valid` `[batch, k_len]`.
pub(super) struct Problem {
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
    /// The host operands of one call (shapes as in
    /// [`crate::kernels::ModelBackend::causal_attention`]).
    pub(super) fn new(
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
    pub(super) fn forward(&self) -> (Vec<f32>, Vec<f32>) {
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
    pub(super) fn backward(
        &self,
        out: &[f32],
        d_out: &[f32],
        lse: &[f32],
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
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
pub(super) fn scratch(which: usize, len: usize) -> Scratch {
    let mut buf = SCRATCH.with(|s| s[which].take());
    buf.resize(len, 0.0);
    Scratch { which, buf }
}

/// A scratch buffer on loan from [`SCRATCH`].
pub(super) struct Scratch {
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
