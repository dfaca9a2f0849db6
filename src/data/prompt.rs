//! Prompts as the model sees them: a sample's templated user message rendered as one user turn of
//! the chat template with the generation prompt, then tokenised. Rollouts, the pipeline's length
//! buckets and the local evaluation responder all tokenise prompts through [`prompt_ids`], so the
//! same text always gives the same ids.

use super::{RlSample, TaskKind};
use crate::error::Result;
use crate::tokenizer::{Message, Tokenizer};

/// The token ids of `text` sent as the single user turn of a chat, with the generation prompt
/// (the chat template writes the special tokens).
pub fn prompt_ids(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    tokenizer.encode_chat(&[Message::new("user", text)], true)
}

/// A prompt ready for rollouts.
#[derive(Debug, Clone)]
pub struct PreparedPrompt {
    /// Index in the dataset.
    pub index: usize,
    /// The sample's id.
    pub id: String,
    /// The templated user message (what the judge's question is cut from).
    pub text: String,
    /// Prompt ids (chat template with generation prompt).
    pub ids: Vec<u32>,
    /// Verifier.
    pub task: TaskKind,
    /// Gold answer.
    pub answer: String,
}

impl PreparedPrompt {
    /// Sample `index` of a dataset: its user message, tokenised with [`prompt_ids`].
    pub fn new(index: usize, sample: &RlSample, tokenizer: &Tokenizer) -> Result<Self> {
        let text = sample.user_prompt()?;
        let ids = prompt_ids(tokenizer, &text)?;
        Self::with_ids(index, sample, text, ids)
    }

    /// Sample `index` with its user message `text` already tokenised to `ids`.
    fn with_ids(index: usize, sample: &RlSample, text: String, ids: Vec<u32>) -> Result<Self> {
        Ok(Self {
            index,
            id: sample.id.clone(),
            text,
            ids,
            task: sample.task_kind()?,
            answer: sample.answer.clone(),
        })
    }
}

/// Tokenises RL samples; prompts over `max_prompt_length` tokens are dropped (count returned).
pub fn prepare_prompts(
    samples: &[RlSample],
    tokenizer: &Tokenizer,
    max_prompt_length: usize,
) -> Result<(Vec<PreparedPrompt>, usize)> {
    let mut out = Vec::new();
    let mut skipped = 0;
    for (index, s) in samples.iter().enumerate() {
        // Too long is decided before the task is resolved, as the loaders always did.
        let text = s.user_prompt()?;
        let ids = prompt_ids(tokenizer, &text)?;
        if ids.len() > max_prompt_length {
            skipped += 1;
            continue;
        }
        out.push(PreparedPrompt::with_ids(index, s, text, ids)?);
    }
    Ok((out, skipped))
}
