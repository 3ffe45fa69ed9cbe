//! The layer plan: which artifact sources are layered, in which order, where. The layer types
//! are the API's (a GameZone's `spec.artifacts` has the same shape); reading and checking a
//! plan is this crate's.

use serde::Deserialize;

pub use gamezone_api::layer::*;

/// A plan file: either a bare list of layers or `{"layers": [...]}`, as JSON or YAML.
#[derive(Deserialize)]
#[serde(untagged)]
enum PlanDoc {
    List(Vec<Layer>),
    Wrapped { layers: Vec<Layer> },
}

/// Parses a plan given as JSON or YAML (a list of layers, or an object with `layers`).
pub fn parse_layers(text: &str) -> crate::Result<Vec<Layer>> {
    let doc = match serde_json::from_str::<PlanDoc>(text) {
        Ok(d) => d,
        Err(json_err) => serde_yaml::from_str::<PlanDoc>(text).map_err(|yaml_err| {
            crate::Error::Plan(format!(
                "expected a JSON or YAML list of layers (or {{\"layers\": [...]}}): JSON: {json_err}; YAML: {yaml_err}"
            ))
        })?,
    };
    let layers = match doc {
        PlanDoc::List(l) | PlanDoc::Wrapped { layers: l } => l,
    };
    validate(&layers)?;
    Ok(layers)
}

/// Checks what the CRD's CEL rules cannot: paths, references, exactly one source.
pub fn validate(layers: &[Layer]) -> crate::Result<()> {
    for (i, layer) in layers.iter().enumerate() {
        let ctx = crate::error::Ctx::new(i, layer.describe());
        let Some(source) = layer.source() else {
            return Err(ctx.invalid("set exactly one source: git, s3, p4Export or local"));
        };
        crate::paths::components(&layer.path)
            .map_err(|m| ctx.invalid(format!("path: {m} (paths are relative to the destination root)")))?;
        if let Some(sub) = &layer.sub_path {
            crate::paths::components(sub)
                .map_err(|m| ctx.invalid(format!("subPath: {m}; subPath must stay inside the source")))?;
        }
        match source {
            SourceRef::Git(g) => {
                let refs = [&g.branch, &g.tag, &g.commit].iter().filter(|r| r.is_some()).count();
                if refs > 1 {
                    return Err(ctx.invalid("set at most one of git.branch, git.tag or git.commit"));
                }
                if let Some(c) = &g.commit
                    && !(c.len() == 40 && c.bytes().all(|b| b.is_ascii_hexdigit()))
                {
                    return Err(ctx.invalid(format!("git.commit `{c}` must be a full 40-hex commit id")));
                }
                if g.url.is_empty() {
                    return Err(ctx.invalid("git.url is empty"));
                }
            }
            SourceRef::S3(s) => {
                if s.bucket.is_empty() || s.endpoint.is_empty() {
                    return Err(ctx.invalid("s3.endpoint and s3.bucket are required"));
                }
                if let Some(p) = &s.prefix {
                    crate::paths::components(p).map_err(|m| ctx.invalid(format!("s3.prefix: {m}")))?;
                }
            }
            SourceRef::P4Export(p) => {
                if p.url.is_some() == p.s3.is_some() {
                    return Err(ctx.invalid("set exactly one of p4Export.url or p4Export.s3"));
                }
                if let Some(sha) = &p.sha256
                    && !(sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()))
                {
                    return Err(ctx.invalid(format!("p4Export.sha256 `{sha}` must be 64 hex digits")));
                }
            }
            SourceRef::Local(l) => {
                if l.path.is_empty() {
                    return Err(ctx.invalid("local.path is empty"));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_list_and_wrapped_json_and_yaml() {
        let json = r#"[{"path":"a","local":{"path":"/x"}}]"#;
        assert_eq!(parse_layers(json).unwrap().len(), 1);
        let wrapped = r#"{"layers":[{"path":"a","git":{"url":"https://h/r.git","branch":"main"},"subPath":"cfg"}]}"#;
        let l = parse_layers(wrapped).unwrap();
        assert_eq!(l[0].sub_path.as_deref(), Some("cfg"));
        let yaml = "- path: a\n  s3:\n    endpoint: http://h:9000\n    bucket: b\n";
        assert_eq!(parse_layers(yaml).unwrap()[0].s3.as_ref().unwrap().bucket, "b");
        assert!(matches!(parse_layers("{nope"), Err(crate::Error::Plan(_))));
    }

    #[test]
    fn rejects_bad_layers_with_the_layer_named() {
        let two = r#"[{"path":"a","local":{"path":"/x"}},{"path":"a","local":{"path":"/x"},"git":{"url":"u"}}]"#;
        let e = parse_layers(two).unwrap_err().to_string();
        assert!(e.starts_with("layer 1"), "{e}");
        for bad in [
            r#"[{"path":"/abs","local":{"path":"/x"}}]"#,
            r#"[{"path":"../up","local":{"path":"/x"}}]"#,
            r#"[{"path":"a","subPath":"../../etc","local":{"path":"/x"}}]"#,
            r#"[{"path":"a","git":{"url":"u","commit":"abc"}}]"#,
            r#"[{"path":"a","git":{"url":"u","branch":"a","tag":"b"}}]"#,
            r#"[{"path":"a","p4Export":{}}]"#,
        ] {
            let e = parse_layers(bad).unwrap_err();
            assert!(matches!(e, crate::Error::Invalid { layer: 0, .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn redacts_credentials_from_urls() {
        assert_eq!(redact_url("https://u:p@host/r.git"), "https://host/r.git");
        assert_eq!(redact_url("https://host/a.tgz?X-Amz-Signature=s"), "https://host/a.tgz");
        assert_eq!(redact_url("ssh://git@host:22/r.git"), "ssh://host:22/r.git");
        assert_eq!(redact_url("git@host:r.git"), "git@host:r.git");
        assert_eq!(redact_url("http://h:9000"), "http://h:9000");
    }

    #[test]
    fn describes_without_credentials() {
        let l = Layer {
            git: Some(GitSource { url: "https://user:hunter2@h/r.git".into(), ..Default::default() }),
            ..Default::default()
        };
        assert_eq!(l.describe(), "git https://h/r.git");
    }
}
