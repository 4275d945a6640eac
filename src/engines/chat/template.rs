//! Prompts from the model's own Jinja chat template (tokenizer_config.json or GGUF
//! `tokenizer.chat_template`), rendered with minijinja plus what Hub templates use:
//! `raise_exception`, `strftime_now`, `tojson`, loop controls, Python string methods and
//! `add_generation_prompt`.

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

/// `strftime_now(format)`, as transformers gives templates: the current UTC time formatted with the
/// C `strftime` codes templates use (`%d %b %Y` in Llama 3's, for its "Today Date" line).
fn strftime_now(format: String) -> Result<String, Error> {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Ok(strftime(&format, secs))
}

/// Formats Unix time `secs` (UTC) with `%d %m %Y %y %b %B %a %A %H %M %S %j %%`; other codes are kept.
fn strftime(format: &str, secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = ["Thursday", "Friday", "Saturday", "Sunday", "Monday", "Tuesday", "Wednesday"];
    let days = (secs / 86_400) as i64;
    // The civil date of a day count (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let before = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334][(month - 1) as usize];
    let yday = before + day + i64::from(leap && month > 2);
    let (hour, minute, second) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let month_name = MONTHS[(month - 1) as usize];
    let weekday = DAYS[days.rem_euclid(7) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out += &format!("{day:02}"),
            Some('m') => out += &format!("{month:02}"),
            Some('Y') => out += &year.to_string(),
            Some('y') => out += &format!("{:02}", year % 100),
            Some('b') => out += &month_name[..3],
            Some('B') => out += month_name,
            Some('a') => out += &weekday[..3],
            Some('A') => out += weekday,
            Some('H') => out += &format!("{hour:02}"),
            Some('M') => out += &format!("{minute:02}"),
            Some('S') => out += &format!("{second:02}"),
            Some('j') => out += &format!("{yday:03}"),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

impl ChatTemplate {
    /// Compiles a template; `bos` / `eos` are the model's token strings.
    pub fn new(source: &str, bos: &str, eos: &str) -> anyhow::Result<Self> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
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
    fn strftime_formats_dates_as_c_does() {
        // 2024-07-26 13:05:09 UTC, a Friday, day 208 of a leap year; and 2000-03-01.
        assert_eq!(
            strftime("%d %b %Y|%A %j %H:%M:%S|%y-%m %B %a %%", 1_721_999_109),
            "26 Jul 2024|Friday 208 13:05:09|24-07 July Fri %"
        );
        assert_eq!(strftime("%d %b %Y %j", 951_868_800), "01 Mar 2000 061");
        // Llama 3.x templates date their system prompt with it when it is defined.
        let t = ChatTemplate::new(
            "{% if strftime_now is defined %}{{ strftime_now('%Y') | length }}{% else %}undefined{% endif %}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(t.render(&[]).unwrap(), "4");
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
