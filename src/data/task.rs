//! The task kind of a sample: which of DocQA-RL-1.6K's three task types it is, from an explicit
//! `task` or a verl-style `data_source`. Data decides it; the reward's verifiers read it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The three task types of DocQA-RL-1.6K, each with its own verifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Free-form QA (MultiHopRAG, MuSiQue, ...): sub-EM after SQuAD normalisation.
    Qa,
    /// Numeric reasoning (DocMath): number match with scale and tolerance rules.
    #[serde(rename = "docmath", alias = "doc_math", alias = "doc-math")]
    DocMath,
    /// Multiple choice A-D; never sent to the judge.
    MultipleChoice,
}

impl TaskKind {
    /// The task of a verl-style `data_source`, matched as the public code does (substring tests in
    /// this order: `long_toc_choices`, `docmath`, `multihoprag` / `musique`).
    pub fn from_data_source(data_source: &str) -> Result<Self> {
        if data_source.contains("long_toc_choices") {
            Ok(TaskKind::MultipleChoice)
        } else if data_source.contains("docmath") {
            Ok(TaskKind::DocMath)
        } else if data_source.contains("multihoprag") || data_source.contains("musique") {
            Ok(TaskKind::Qa)
        } else {
            Err(Error::Invalid(format!(
                "unknown data_source {data_source:?}: expected one containing \"long_toc_choices\" \
                 (multiple choice), \"docmath\" (numeric) or \"multihoprag\" / \"musique\" (QA), \
                 or give an explicit task (qa, docmath, multiple_choice)"
            )))
        }
    }

    /// The task of a sample: its explicit `task` field when present, else its `data_source`.
    pub fn resolve(task: Option<&str>, data_source: Option<&str>) -> Result<Self> {
        match (task, data_source) {
            (Some(t), _) => t.parse(),
            (None, Some(ds)) => Self::from_data_source(ds),
            (None, None) => Err(Error::Invalid(
                "neither `task` nor `data_source` is given: one is needed to pick the verifier"
                    .into(),
            )),
        }
    }

    /// The canonical name, as accepted by [`FromStr`].
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Qa => "qa",
            TaskKind::DocMath => "docmath",
            TaskKind::MultipleChoice => "multiple_choice",
        }
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TaskKind {
    type Err = Error;

    /// Accepts longrl's names and DocQA-RL's `ability` values (`doc-qa`, `doc-math`, `doc-mc`).
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "qa" | "doc-qa" | "docqa" => Ok(TaskKind::Qa),
            "docmath" | "doc-math" | "math" | "numeric" => Ok(TaskKind::DocMath),
            "multiple_choice" | "multiple-choice" | "mc" | "doc-mc" | "choice" => {
                Ok(TaskKind::MultipleChoice)
            }
            _ => Err(Error::Invalid(format!(
                "unknown task {s:?}: expected qa (doc-qa), docmath (doc-math) or multiple_choice (doc-mc)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_dispatch_like_the_reference() {
        let t = |s| TaskKind::from_data_source(s).unwrap();
        assert_eq!(t("long_toc_choices_0_20000"), TaskKind::MultipleChoice);
        assert_eq!(t("docmath_v1"), TaskKind::DocMath);
        assert_eq!(t("multihoprag_v1"), TaskKind::Qa);
        assert_eq!(t("musique_v1"), TaskKind::Qa);
        let e = TaskKind::from_data_source("hotpot")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown data_source \"hotpot\""), "{e}");
        assert_eq!(
            "doc-mc".parse::<TaskKind>().unwrap(),
            TaskKind::MultipleChoice
        );
        assert_eq!(
            TaskKind::resolve(Some("qa"), Some("docmath_v1")).unwrap(),
            TaskKind::Qa
        );
        assert!(TaskKind::resolve(None, None).is_err());
    }
}
