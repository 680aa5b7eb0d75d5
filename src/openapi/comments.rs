//! Descriptions from `.proto` comments.

use super::*;

/// Sets `description` to the paragraphs present, followed by the one the target already
/// has (so a field's own comment comes before its well-known type's note).
pub(super) fn describe(target: &mut Value, paragraphs: impl IntoIterator<Item = Option<String>>) {
    let Some(object) = target.as_object_mut() else {
        return;
    };
    let mut text: Vec<String> = paragraphs.into_iter().flatten().collect();
    if let Some(Value::String(existing)) = object.shift_remove("description") {
        text.push(existing);
    }
    if !text.is_empty() {
        object.insert("description".into(), text.join("\n\n").into());
    }
}

pub(super) fn field_comments(field: &FieldDescriptor) -> Option<String> {
    comments(&field.parent_file(), field.path())
}

/// The comment on the element at `path` of `file` (leading, else trailing). Only files
/// compiled from `.proto` sources keep comments; descriptor sets usually do not.
pub(super) fn comments(file: &FileDescriptor, path: &[i32]) -> Option<String> {
    let info = file.file_descriptor_proto().source_code_info.as_ref()?;
    let location = info.location.iter().find(|l| l.path == path)?;
    let raw = location
        .leading_comments
        .as_deref()
        .or(location.trailing_comments.as_deref())?;
    let lines: Vec<&str> = raw
        .lines()
        .map(|line| line.strip_prefix(' ').unwrap_or(line).trim_end())
        .collect();
    let text = lines.join("\n").trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// The first paragraph (on one line) as the summary; the whole comment as the
/// description only when it says more than that.
pub(super) fn summary_and_description(text: &str) -> (String, Option<String>) {
    let first = text.split("\n\n").next().unwrap_or(text);
    let summary = first.split_whitespace().collect::<Vec<_>>().join(" ");
    let whole = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let description = (whole != summary).then(|| text.to_string());
    (summary, description)
}
