//! The Qwen2 / Qwen3 (dense) model family: configuration, layers, rotary tables, KV cache and
//! checkpoint I/O (one decoder for both, see [`qwen2`]). It knows no training; its fused ops come
//! from [`crate::kernels`] through [`ModelBackend`].

pub mod adapter;
pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod lora;
pub mod qwen2;
pub mod rope;
pub mod weights;

pub use crate::kernels::{HeadLayout, ModelBackend, TrainBackend};
pub use adapter::{is_adapter_dir, load_adapted, load_adapter, save_adapter};
pub use cache::KvCache;
pub use checkpoint::{load_model, load_model_as, save_model, BaseDtype, SaveDtype};
pub use config::{ModelType, Qwen2Config, RopeScaling};
pub use lora::{LoraConfig, TargetModules};
pub use qwen2::{Qwen2ForCausalLM, Qwen3ForCausalLM, DEFAULT_LOGITS_CHUNK};
pub use rope::RopeParams;
