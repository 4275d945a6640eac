//! Constrained decoding for `response_format` `json_object` and `json_schema`.
//!
//! A [`JsonMatcher`] is an incremental, byte-level pushdown automaton: it accepts exactly the byte
//! strings that are prefixes of a JSON document matching a [`Schema`]. The sampler asks it which
//! tokens may come next, so the output is valid by construction, not by retrying.
//!
//! Schemas cover what structured-output clients send: `type` object (with `properties` emitted in
//! order and all required, as in OpenAI's strict mode, or free-form without `properties`), array
//! (`items`), string, number, integer, boolean, null, `enum`, `const`, nullable type lists, and
//! `$ref` into `$defs` / `definitions`.

use serde_json::Value;

/// Most consecutive whitespace bytes allowed between tokens (stops endless indentation).
const MAX_WHITESPACE: u8 = 12;
/// Deepest nesting accepted.
const MAX_DEPTH: usize = 64;

/// A compiled schema node.
#[derive(Debug, Clone, PartialEq)]
pub enum Schema {
    /// Any JSON value.
    Any,
    /// An object; `None` means any keys with any values.
    Object(Option<Vec<(String, Schema)>>),
    /// An array of items.
    Array(Box<Schema>),
    /// A string.
    String,
    /// A number (`integer` forbids fraction and exponent).
    Number {
        /// Integer only.
        integer: bool,
    },
    /// true / false.
    Boolean,
    /// null.
    Null,
    /// One of these JSON texts exactly (enum, const).
    Literals(Vec<String>),
    /// One of several schemas, told apart by the first byte (nullable types).
    Union(Vec<Schema>),
}

impl Schema {
    /// Compiles a JSON Schema; errors name what is not supported.
    pub fn compile(schema: &Value) -> Result<Schema, String> {
        compile(schema, schema, 0)
    }
}

fn compile(node: &Value, root: &Value, depth: usize) -> Result<Schema, String> {
    if depth > MAX_DEPTH {
        return Err("the schema nests too deeply or refers to itself".into());
    }
    let Some(obj) = node.as_object() else {
        return match node {
            Value::Bool(true) => Ok(Schema::Any),
            _ => Err(format!("unsupported schema node {node}")),
        };
    };
    if let Some(reference) = obj.get("$ref").and_then(Value::as_str) {
        let path =
            reference.strip_prefix("#/").ok_or_else(|| format!("$ref {reference:?} must point inside the schema"))?;
        let mut target = root;
        for part in path.split('/') {
            target = target.get(part).ok_or_else(|| format!("$ref {reference:?} does not resolve"))?;
        }
        return compile(target, root, depth + 1);
    }
    if let Some(value) = obj.get("const") {
        return Ok(Schema::Literals(vec![value.to_string()]));
    }
    if let Some(values) = obj.get("enum") {
        let values = values.as_array().ok_or("enum must be a list")?;
        return Ok(Schema::Literals(values.iter().map(Value::to_string).collect()));
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(options) = obj.get(key).and_then(Value::as_array) {
            let options = options.iter().map(|o| compile(o, root, depth + 1)).collect::<Result<Vec<_>, _>>()?;
            return union(options);
        }
    }
    match obj.get("type") {
        None => Ok(Schema::Any),
        Some(Value::String(t)) => typed(t, obj, root, depth),
        Some(Value::Array(types)) => {
            let options = types
                .iter()
                .map(|t| typed(t.as_str().ok_or("type list must hold strings")?, obj, root, depth))
                .collect::<Result<Vec<_>, String>>()?;
            union(options)
        }
        Some(other) => Err(format!("unsupported type {other}")),
    }
}

fn union(options: Vec<Schema>) -> Result<Schema, String> {
    let mut seen = Vec::new();
    for o in &options {
        let first = first_bytes(o);
        if first.iter().any(|b| seen.contains(b)) {
            return Err("anyOf / type lists must differ in their first character (e.g. a type and null)".into());
        }
        seen.extend(first);
    }
    Ok(Schema::Union(options))
}

fn first_bytes(schema: &Schema) -> Vec<u8> {
    match schema {
        Schema::Any => b"{[\"-0123456789tfn".to_vec(),
        Schema::Object(_) => vec![b'{'],
        Schema::Array(_) => vec![b'['],
        Schema::String => vec![b'"'],
        Schema::Number { .. } => b"-0123456789".to_vec(),
        Schema::Boolean => vec![b't', b'f'],
        Schema::Null => vec![b'n'],
        Schema::Literals(l) => l.iter().filter_map(|s| s.bytes().next()).collect(),
        Schema::Union(u) => u.iter().flat_map(first_bytes).collect(),
    }
}

fn typed(t: &str, obj: &serde_json::Map<String, Value>, root: &Value, depth: usize) -> Result<Schema, String> {
    Ok(match t {
        "object" => match obj.get("properties").and_then(Value::as_object) {
            Some(props) if !props.is_empty() => Schema::Object(Some(
                props
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), compile(v, root, depth + 1)?)))
                    .collect::<Result<_, String>>()?,
            )),
            _ => Schema::Object(None),
        },
        "array" => Schema::Array(Box::new(match obj.get("items") {
            Some(items) => compile(items, root, depth + 1)?,
            None => Schema::Any,
        })),
        "string" => Schema::String,
        "number" => Schema::Number { integer: false },
        "integer" => Schema::Number { integer: true },
        "boolean" => Schema::Boolean,
        "null" => Schema::Null,
        other => return Err(format!("unsupported type {other:?}")),
    })
}

#[derive(Debug, Clone)]
enum Frame {
    /// Expecting a value of this schema.
    Value(Schema),
    /// Inside a free-form object: 0 = after `{`, 1 = after `,` (key required), 2 = after key (`:`),
    /// 3 = after a value (`,` or `}`).
    FreeObject(u8),
    /// Inside an object with fixed properties: next property index, and 0 = before key,
    /// 1 = after key (`:`), 2 = after value.
    FixedObject(Vec<(String, Schema)>, usize, u8),
    /// Inside an array: 0 = after `[`, 1 = after `,`, 2 = after a value.
    Array(Schema, u8),
    /// Inside a string: whether the last byte was a backslash, and how many `\u` hex digits remain.
    String { escaped: bool, hex: u8 },
    /// Inside a number: its state (see `number_step`) and whether it must be an integer.
    Number { state: u8, integer: bool },
    /// Matching one of several exact texts; `pos` bytes matched so far.
    Literals(Vec<Vec<u8>>, usize),
}

enum Step {
    Consumed,
    Reject,
    /// The frame is complete without this byte; the parent must take it.
    Done,
}

/// The incremental matcher of one sequence.
#[derive(Debug, Clone)]
pub struct JsonMatcher {
    stack: Vec<Frame>,
    whitespace: u8,
    started: bool,
    closing: bool,
}

impl JsonMatcher {
    /// A matcher for a whole document of this schema.
    pub fn new(schema: Schema) -> Self {
        Self { stack: vec![Frame::Value(schema)], whitespace: 0, started: false, closing: false }
    }

    /// Open frames: a bound on the bytes still needed to close the document when closing.
    pub fn depth(&self) -> usize {
        self.stack.len()
    }

    /// From now on, only bytes that lead to the shortest completion are allowed: no new members,
    /// elements or containers, strings end at the next quote. Used when the token budget runs low, so a
    /// free-form document still closes before `max_tokens`.
    pub fn close_soon(&mut self) {
        self.closing = true;
    }

    /// Whether a complete document has been matched (only end-of-text may follow).
    pub fn is_complete(&self) -> bool {
        self.started && self.stack.iter().all(|f| matches!(f, Frame::Number { state, .. } if number_can_end(*state)))
    }

    /// Whether these bytes may come next.
    pub fn allows(&self, bytes: &[u8]) -> bool {
        !bytes.is_empty() && self.clone().advance(bytes)
    }

    /// Consumes bytes; false (and an undefined state) if they do not fit.
    pub fn advance(&mut self, bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| self.feed(b))
    }

    fn feed(&mut self, b: u8) -> bool {
        let ws = matches!(b, b' ' | b'\n' | b'\t' | b'\r');
        loop {
            let Some(top) = self.stack.last_mut() else {
                return false; // nothing may follow a complete document
            };
            let between =
                matches!(top, Frame::Value(_) | Frame::FreeObject(_) | Frame::FixedObject(..) | Frame::Array(..));
            if ws && between {
                if !self.started || self.closing || self.whitespace >= MAX_WHITESPACE {
                    return false;
                }
                self.whitespace += 1;
                return true;
            }
            let closing = self.closing;
            let step = match top {
                Frame::FreeObject(0) if closing && b == b'"' => Step::Reject,
                Frame::FreeObject(3) | Frame::Array(_, 2) if closing && b == b',' => Step::Reject,
                Frame::Array(_, 0) if closing && b != b']' => Step::Reject,
                Frame::String { escaped: false, hex: 0 } if closing && b != b'"' => Step::Reject,
                Frame::Value(Schema::Any) if closing && matches!(b, b'{' | b'[') => Step::Reject,
                Frame::Number { state, .. } if closing && number_can_end(*state) => Step::Done,
                Frame::Value(schema) => {
                    let schema = schema.clone();
                    self.stack.pop();
                    self.start_value(schema, b)
                }
                Frame::FreeObject(state) => match (*state, b) {
                    (0, b'}') | (3, b'}') => {
                        self.stack.pop();
                        Step::Consumed
                    }
                    (0 | 1, b'"') => {
                        *state = 2;
                        self.stack.push(Frame::String { escaped: false, hex: 0 });
                        Step::Consumed
                    }
                    (2, b':') => {
                        *state = 3;
                        self.stack.push(Frame::Value(Schema::Any));
                        Step::Consumed
                    }
                    (3, b',') => {
                        *state = 1;
                        Step::Consumed
                    }
                    _ => Step::Reject,
                },
                Frame::FixedObject(props, index, state) => match (*state, b) {
                    (0, _) => {
                        let key = serde_json::to_string(&props[*index].0).expect("string").into_bytes();
                        *state = 1;
                        self.stack.push(Frame::Literals(vec![key], 0));
                        continue;
                    }
                    (1, b':') => {
                        *state = 2;
                        let schema = props[*index].1.clone();
                        self.stack.push(Frame::Value(schema));
                        Step::Consumed
                    }
                    (2, b',') if *index + 1 < props.len() => {
                        *index += 1;
                        *state = 0;
                        Step::Consumed
                    }
                    (2, b'}') if *index + 1 == props.len() => {
                        self.stack.pop();
                        Step::Consumed
                    }
                    _ => Step::Reject,
                },
                Frame::Array(item, state) => match (*state, b) {
                    (0, b']') | (2, b']') => {
                        self.stack.pop();
                        Step::Consumed
                    }
                    (2, b',') => {
                        *state = 1;
                        Step::Consumed
                    }
                    (0 | 1, _) => {
                        *state = 2;
                        let item = item.clone();
                        self.stack.push(Frame::Value(item));
                        continue;
                    }
                    _ => Step::Reject,
                },
                Frame::String { escaped, hex } => {
                    if *hex > 0 {
                        if b.is_ascii_hexdigit() {
                            *hex -= 1;
                            Step::Consumed
                        } else {
                            Step::Reject
                        }
                    } else if *escaped {
                        *escaped = false;
                        match b {
                            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Step::Consumed,
                            b'u' => {
                                *hex = 4;
                                Step::Consumed
                            }
                            _ => Step::Reject,
                        }
                    } else {
                        match b {
                            b'"' => {
                                self.stack.pop();
                                Step::Consumed
                            }
                            b'\\' => {
                                *escaped = true;
                                Step::Consumed
                            }
                            0..=0x1f => Step::Reject,
                            _ => Step::Consumed,
                        }
                    }
                }
                Frame::Number { state, integer } => match number_step(*state, b, *integer) {
                    Some(next) => {
                        *state = next;
                        Step::Consumed
                    }
                    None if number_can_end(*state) => Step::Done,
                    None => Step::Reject,
                },
                Frame::Literals(options, pos) => {
                    let p = *pos;
                    let complete = options.iter().any(|o| o.len() == p);
                    let next: Vec<Vec<u8>> = options.iter().filter(|o| o.get(p) == Some(&b)).cloned().collect();
                    if !next.is_empty() {
                        *options = next;
                        *pos += 1;
                        if options.iter().all(|o| o.len() == *pos) {
                            self.stack.pop();
                        }
                        Step::Consumed
                    } else if complete {
                        Step::Done
                    } else {
                        Step::Reject
                    }
                }
            };
            match step {
                Step::Consumed => {
                    self.whitespace = 0;
                    self.started = true;
                    return true;
                }
                Step::Reject => return false,
                Step::Done => {
                    self.stack.pop();
                    continue;
                }
            }
        }
    }

    fn start_value(&mut self, schema: Schema, b: u8) -> Step {
        if self.stack.len() >= MAX_DEPTH {
            return Step::Reject;
        }
        let frame = match (&schema, b) {
            (Schema::Union(options), _) => {
                return match options.iter().find(|o| first_bytes(o).contains(&b)) {
                    Some(o) => self.start_value(o.clone(), b),
                    None => Step::Reject,
                }
            }
            (Schema::Any | Schema::Object(None), b'{') => Frame::FreeObject(0),
            (Schema::Object(Some(props)), b'{') => Frame::FixedObject(props.clone(), 0, 0),
            (Schema::Any, b'[') => Frame::Array(Schema::Any, 0),
            (Schema::Array(item), b'[') => Frame::Array((**item).clone(), 0),
            (Schema::Any | Schema::String, b'"') => Frame::String { escaped: false, hex: 0 },
            (Schema::Any, b'-' | b'0'..=b'9') => {
                Frame::Number { state: number_step(0, b, false).expect("start"), integer: false }
            }
            (Schema::Number { integer }, b'-' | b'0'..=b'9') => {
                Frame::Number { state: number_step(0, b, *integer).expect("start"), integer: *integer }
            }
            (Schema::Any | Schema::Boolean, b't') => Frame::Literals(vec![b"rue".to_vec()], 0),
            (Schema::Any | Schema::Boolean, b'f') => Frame::Literals(vec![b"alse".to_vec()], 0),
            (Schema::Any | Schema::Null, b'n') => Frame::Literals(vec![b"ull".to_vec()], 0),
            (Schema::Literals(options), _) => {
                let rest: Vec<Vec<u8>> = options
                    .iter()
                    .filter(|o| o.as_bytes().first() == Some(&b))
                    .map(|o| o.as_bytes()[1..].to_vec())
                    .collect();
                if rest.is_empty() {
                    return Step::Reject;
                }
                if rest.iter().all(Vec::is_empty) {
                    return Step::Consumed;
                }
                Frame::Literals(rest, 0)
            }
            _ => return Step::Reject,
        };
        self.stack.push(frame);
        Step::Consumed
    }
}

/// Number states: 0 start, 1 after `-`, 2 after a leading 0, 3 in integer digits, 4 after `.`,
/// 5 in fraction digits, 6 after `e`, 7 after the exponent sign, 8 in exponent digits.
fn number_step(state: u8, b: u8, integer: bool) -> Option<u8> {
    match (state, b) {
        (0, b'-') => Some(1),
        (0 | 1, b'0') => Some(2),
        (0 | 1, b'1'..=b'9') => Some(3),
        (3, b'0'..=b'9') => Some(3),
        (2 | 3, b'.') if !integer => Some(4),
        (4 | 5, b'0'..=b'9') => Some(5),
        (2 | 3 | 5, b'e' | b'E') if !integer => Some(6),
        (6, b'+' | b'-') => Some(7),
        (6..=8, b'0'..=b'9') => Some(8),
        _ => None,
    }
}

fn number_can_end(state: u8) -> bool {
    matches!(state, 2 | 3 | 5 | 8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn accepts(schema: &Value, text: &str) -> bool {
        let mut m = JsonMatcher::new(Schema::compile(schema).unwrap());
        m.advance(text.as_bytes()) && m.is_complete()
    }

    #[test]
    fn free_json_objects() {
        let any_object = json!({ "type": "object" });
        assert!(accepts(&any_object, r#"{"a": [1, -2.5e3, true, null, "x\"y\u00e9"], "b": {}}"#));
        assert!(accepts(&any_object, "{}"));
        assert!(!accepts(&any_object, "[1]"));
        assert!(!accepts(&any_object, r#"{"a": 01}"#));
        assert!(!accepts(&any_object, r#"{"a" 1}"#));
        assert!(!accepts(&any_object, r#"{"a": 1,}"#));
        let mut m = JsonMatcher::new(Schema::compile(&any_object).unwrap());
        assert!(m.advance(br#"{"a": 12"#));
        assert!(!m.is_complete());
        assert!(m.allows(b"}") && m.allows(b"3") && !m.allows(b"]"));
        assert!(m.advance(b"}"));
        assert!(m.is_complete() && !m.allows(b" "));
    }

    #[test]
    fn schemas_fix_keys_types_and_enums() {
        let schema = json!({
            "type": "object",
            "properties": {
                "name": { "type": "string" },
                "age": { "type": "integer" },
                "pet": { "enum": ["cat", "dog"] },
                "tags": { "type": "array", "items": { "type": "string" } },
                "note": { "type": ["string", "null"] },
            },
            "required": ["name", "age", "pet", "tags", "note"],
        });
        assert!(accepts(&schema, r#"{"name": "Ann", "age": 30, "pet": "dog", "tags": ["a", "b"], "note": null}"#));
        assert!(accepts(&schema, "{\n  \"name\":\"B\",\"age\":-1,\"pet\":\"cat\",\"tags\":[],\"note\":\"hi\"\n}"));
        assert!(!accepts(&schema, r#"{"age": 30, "name": "Ann", "pet": "dog", "tags": [], "note": null}"#), "order");
        assert!(
            !accepts(&schema, r#"{"name": "Ann", "age": 30.5, "pet": "dog", "tags": [], "note": null}"#),
            "integer"
        );
        assert!(!accepts(&schema, r#"{"name": "Ann", "age": 30, "pet": "cow", "tags": [], "note": null}"#), "enum");
        assert!(!accepts(&schema, r#"{"name": "Ann", "age": 30, "pet": "dog", "tags": [1], "note": null}"#), "items");
        assert!(!accepts(&schema, r#"{"name": "Ann"}"#), "missing properties");
    }

    #[test]
    fn closing_mode_finishes_free_documents_quickly() {
        let mut m = JsonMatcher::new(Schema::compile(&json!({ "type": "object" })).unwrap());
        assert!(m.advance(br#"{"a": [1, {"b": "long tex"#));
        m.close_soon();
        assert!(!m.allows(b"t") && m.allows(b"\""));
        assert!(m.advance(b"\""));
        assert!(!m.allows(b",") && m.allows(b"}"));
        assert!(m.advance(b"}"));
        assert!(!m.allows(b",") && !m.allows(b" ") && m.allows(b"]"));
        assert!(m.advance(b"]}"));
        assert!(m.is_complete());
    }

    #[test]
    fn refs_and_unsupported_schemas() {
        let schema = json!({ "$defs": { "p": { "type": "boolean" } }, "type": "object", "properties": { "ok": { "$ref": "#/$defs/p" } } });
        assert!(accepts(&schema, r#"{"ok": false}"#));
        assert!(Schema::compile(&json!({ "type": "tuple" })).is_err());
        assert!(Schema::compile(&json!({ "anyOf": [{ "type": "string" }, { "enum": ["x"] }] })).is_err());
    }
}
