//! Rotary position embeddings: inverse frequencies for plain, linear and YaRN scaling, computed as
//! transformers computes them (f32 arithmetic where it uses f32), and the cos/sin tables that
//! [`crate::kernels::ModelBackend::rotary`] applies to q/k.

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use super::config::{Qwen2Config, RopeScaling};

/// Per-dimension inverse frequencies and the cos/sin scale of a model's RoPE.
#[derive(Debug, Clone)]
pub struct RopeParams {
    /// `head_dim / 2` inverse frequencies.
    pub inv_freq: Vec<f32>,
    /// Factor applied to cos and sin (YaRN's attention factor; 1 otherwise).
    pub attention_factor: f32,
}

impl RopeParams {
    /// Computes the inverse frequencies of `config`, matching transformers' `ROPE_INIT_FUNCTIONS`.
    pub fn new(config: &Qwen2Config) -> Self {
        let dim = config.head_dim;
        let base = config.rope_theta;
        // transformers: base ** (arange(0, dim, 2).float() / dim), in f32.
        let pos_freqs: Vec<f32> = (0..dim / 2)
            .map(|i| (base as f32).powf((2 * i) as f32 / dim as f32))
            .collect();
        let plain: Vec<f32> = pos_freqs.iter().map(|p| 1.0 / p).collect();
        match &config.rope_scaling {
            RopeScaling::None => Self {
                inv_freq: plain,
                attention_factor: 1.0,
            },
            RopeScaling::Linear { factor } => Self {
                inv_freq: plain.iter().map(|f| f / *factor as f32).collect(),
                attention_factor: 1.0,
            },
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                attention_factor,
                mscale,
                mscale_all_dim,
                truncate,
            } => {
                let get_mscale = |scale: f64, m: f64| {
                    if scale <= 1.0 {
                        1.0
                    } else {
                        0.1 * m * scale.ln() + 1.0
                    }
                };
                let attention_factor =
                    attention_factor.unwrap_or_else(|| match (mscale, mscale_all_dim) {
                        (Some(m), Some(a)) if *m != 0.0 && *a != 0.0 => {
                            get_mscale(*factor, *m) / get_mscale(*factor, *a)
                        }
                        _ => get_mscale(*factor, 1.0),
                    });
                let correction_dim = |rotations: f64| {
                    (dim as f64
                        * (*original_max_position_embeddings as f64
                            / (rotations * 2.0 * std::f64::consts::PI))
                            .ln())
                        / (2.0 * base.ln())
                };
                let (mut low, mut high) = (correction_dim(*beta_fast), correction_dim(*beta_slow));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let low = low.max(0.0);
                let high = high.min(dim as f64 - 1.0);
                let (low, high) = (
                    low as f32,
                    if low == high { high + 0.001 } else { high } as f32,
                );
                let inv_freq = pos_freqs
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                        let extrapolation_factor = 1.0 - ramp;
                        let interpolation = 1.0 / (*factor as f32 * p);
                        let extrapolation = 1.0 / p;
                        interpolation * (1.0 - extrapolation_factor)
                            + extrapolation * extrapolation_factor
                    })
                    .collect();
                Self {
                    inv_freq,
                    attention_factor: attention_factor as f32,
                }
            }
        }
    }

    /// cos and sin tables for `position_ids` `[batch, seq]`, each `[batch, 1, seq, head_dim]`.
    pub fn cos_sin<B: Backend>(
        &self,
        position_ids: Tensor<B, 2, Int>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let device = position_ids.device();
        let [batch, seq] = position_ids.dims();
        let half = self.inv_freq.len();
        let inv_freq =
            Tensor::<B, 1>::from_data(TensorData::new(self.inv_freq.clone(), [half]), &device)
                .reshape([1, 1, half]);
        let freqs = position_ids.float().reshape([batch, seq, 1]) * inv_freq;
        let emb = Tensor::cat(vec![freqs.clone(), freqs], 2).unsqueeze_dim::<4>(1);
        let cos = emb.clone().cos();
        let sin = emb.sin();
        if self.attention_factor != 1.0 {
            (
                cos.mul_scalar(self.attention_factor),
                sin.mul_scalar(self.attention_factor),
            )
        } else {
            (cos, sin)
        }
    }
}
