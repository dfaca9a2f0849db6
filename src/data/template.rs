//! The QwenLong-L1 prompt template (a single user turn, no system prompt; the model's chat
//! template is applied on top) and the way back from a prompt to its question (what the judge is
//! shown).

/// The recipe's template; `$DOC$` and `$Q$` are replaced by the document and the question.
pub const PROMPT_TEMPLATE: &str = "Please read the following text and answer the question below.\n\n<text>\n$DOC$\n</text>\n\n$Q$\n\nFormat your response as follows: \"Therefore, the answer is (insert answer here)\".";

/// The user message for a document and a question.
pub fn render_prompt(document: &str, question: &str) -> String {
    // Substitute the question first: a document that contains "$Q$" must stay as it is.
    let (head, tail) = PROMPT_TEMPLATE
        .split_once("$DOC$")
        .expect("the template has a document slot");
    format!("{head}{document}{}", tail.replace("$Q$", question))
}

/// The question of a templated prompt, as the judge sees it: the text between `</text>` and
/// "Format your response as follows:" (as the public code cuts it). `None` when the prompt lacks
/// either marker.
pub fn question_from_prompt(prompt: &str) -> Option<String> {
    let start = prompt.find("</text>")?;
    let end = prompt.find("Format your response as follows:")?;
    if end < start {
        return None;
    }
    Some(prompt[start + "</text>".len()..end].trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_judge_can_cut_the_question_back_out() {
        let p = render_prompt("A $Q$ in the text.", "Who?");
        assert!(p.starts_with("Please read the following text"));
        assert!(p.contains("<text>\nA $Q$ in the text.\n</text>\n\nWho?\n\nFormat your response"));
        assert_eq!(question_from_prompt(&p).as_deref(), Some("Who?"));
    }
}
