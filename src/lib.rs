//! longrl: train long-context reasoning LLMs with the QwenLong-L1 recipe (warm-up SFT,
//! curriculum-guided phased GRPO/DAPO, difficulty-aware retrospective sampling, hybrid rule + LLM
//! judge rewards) on burn, with one code path for CUDA, wgpu and CPU backends.

pub mod ablation;
pub mod bench;
pub mod cli;
pub mod config;
pub mod data;
pub mod device;
pub mod distributed;
pub mod error;
pub mod eval;
pub mod generate;
pub mod io;
pub mod jit;
pub mod kernels;
pub mod metrics;
pub mod model;
pub mod openai;
pub mod pipeline;
pub mod plan;
pub mod reward;
pub mod rl;
pub mod sft;
pub mod shapes;
pub mod tokenizer;
pub mod train;

pub use device::DeviceSpec;
pub use error::{Error, Result};
