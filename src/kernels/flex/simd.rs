//! Element-wise loops over score rows, compiled for AVX-512 or AVX2 when the CPU has them (the
//! crate itself targets baseline x86-64) and written with independent lanes so they vectorise.

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
