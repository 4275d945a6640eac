//! Prompts from the model's own Jinja chat template (tokenizer_config.json or GGUF
//! `tokenizer.chat_template`), rendered with minijinja plus what Hub templates use:
//! `raise_exception`, `tojson`, loop controls, Python string methods and `add_generation_prompt`.

use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;

/// One message as templates see it.
#[derive(Debug, Clone, Serialize)]
pub struct TemplateMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// Its text, or its parts when it holds images.
    pub content: Content,
}

/// A message's content: plain text, or parts as vision templates expect them
/// (`{"type": "text", "text": …}` and `{"type": "image"}`).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Content {
    /// Text only.
    Text(String),
    /// Text and images in order.
    Parts(Vec<Part>),
}

/// One part of a message with images.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// An image, whose tokens the template places.
    Image,
}

impl Content {
    /// Whether the text of the content contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        match self {
            Content::Text(t) => t.contains(needle),
            Content::Parts(parts) => parts.iter().any(|p| matches!(p, Part::Text { text } if text.contains(needle))),
        }
    }
}

impl From<&str> for Content {
    fn from(text: &str) -> Self {
        Content::Text(text.to_string())
    }
}

impl From<String> for Content {
    fn from(text: String) -> Self {
        Content::Text(text)
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

fn raise_exception(message: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

impl ChatTemplate {
    /// Compiles a template; `bos` / `eos` are the model's token strings.
    pub fn new(source: &str, bos: &str, eos: &str) -> anyhow::Result<Self> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned("chat".to_string(), source.to_string())
            .map_err(|e| anyhow::anyhow!("chat template does not compile: {e}"))?;
        Ok(Self { env, bos: bos.into(), eos: eos.into() })
    }

    /// The prompt text for a conversation, ending where the assistant's answer starts.
    pub fn render(&self, messages: &[TemplateMessage]) -> Result<String, String> {
        let template = self.env.get_template("chat").map_err(|e| e.to_string())?;
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => self.bos,
                eos_token => self.eos,
            })
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidOperation => {
                    e.detail().unwrap_or("the chat template refused the messages").to_string()
                }
                _ => format!("the chat template failed: {e}"),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_chatml_with_generation_prompt_and_exceptions() {
        let source = "{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tools') }}{% endif %}\
            <|im_start|>{{ m.role }}\n{{ m.content | trim }}<|im_end|>\n{% endfor %}\
            {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let t = ChatTemplate::new(source, "<s>", "</s>").unwrap();
        let msg = |role: &str, content: &str| TemplateMessage { role: role.into(), content: content.into() };
        let text = t.render(&[msg("system", "Be brief."), msg("user", " Hi ")]).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(t.render(&[msg("tool", "x")]).unwrap_err(), "no tools");
    }

    #[test]
    fn python_string_methods_and_tojson() {
        let t = ChatTemplate::new("{{ messages[0].content.strip().upper() }}|{{ messages[0].role | tojson }}", "", "")
            .unwrap();
        let out = t.render(&[TemplateMessage { role: "user".into(), content: "  ok ".into() }]).unwrap();
        assert_eq!(out, "OK|\"user\"");
    }

    #[test]
    fn image_parts_reach_the_template_as_typed_parts() {
        let source = "{% for p in messages[0].content %}{% if p.type == 'image' %}<img>{% else %}{{ p.text }}{% endif %}{% endfor %}";
        let t = ChatTemplate::new(source, "", "").unwrap();
        let parts = Content::Parts(vec![Part::Text { text: "a".into() }, Part::Image, Part::Text { text: "b".into() }]);
        let out = t.render(&[TemplateMessage { role: "user".into(), content: parts }]).unwrap();
        assert_eq!(out, "a<img>b");
    }
}
