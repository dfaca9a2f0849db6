//! `longrl merge`: a PEFT adapter folded into its base and written as a plain HuggingFace folder
//! (PEFT's `merge_and_unload().save_pretrained()`), for serving without adapter support.

use std::path::PathBuf;

use clap::Args;

use crate::device::BackendFn;
use crate::error::Result;
use crate::model::{checkpoint, load_adapted, save_model, ModelBackend, SaveDtype};

/// Arguments of `longrl merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The base model folder the adapter was trained on.
    #[arg(long)]
    pub model: PathBuf,
    /// The PEFT adapter folder (adapter_config.json, adapter_model.safetensors).
    #[arg(long)]
    pub adapter: PathBuf,
    /// Output folder (config.json, safetensors, tokenizer files).
    #[arg(long)]
    pub out: PathBuf,
    /// dtype of the written weights (float32, bfloat16, float16); default: the base's own.
    #[arg(long)]
    pub dtype: Option<String>,
}

/// Runs `merge` on the device it is given (the merge is one pass over the weights, in f32).
pub struct MergeTask(pub MergeArgs);

impl BackendFn for MergeTask {
    type Output = Result<()>;

    fn call<B: ModelBackend>(self, device: B::Device) -> Result<()> {
        let args = self.0;
        let dtype = match &args.dtype {
            Some(d) => SaveDtype::parse(d)?,
            None => checkpoint::stored_dtype(&args.model)?,
        };
        let model = load_adapted::<B>(&args.model, Some(&args.adapter), None, &device)?;
        save_model(
            &model.merged(),
            &args.out,
            dtype,
            Some(&args.model),
            checkpoint::DEFAULT_MAX_SHARD_BYTES,
        )?;
        eprintln!(
            "merged {} into {} -> {} ({})",
            args.adapter.display(),
            args.model.display(),
            args.out.display(),
            dtype.hf_name()
        );
        Ok(())
    }
}
