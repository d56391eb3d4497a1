//! The schema as served is the contract's (plus `analysisEvents`), pinned by a checked-in copy,
//! and checked against the contract itself (`contract-schema.graphql`, a copy of
//! `shared/contract/schema.graphql`): every type, field, argument and enum value it names, in
//! its shape, with nothing new required. After an intended change of the served schema:
//! `UPDATE_SDL=1 cargo test -p graph-gateway --test schema`.

const CHECKED_IN: &str = include_str!("../schema.graphql");

#[test]
fn served_sdl_is_the_checked_in_schema() {
    let served = graph_gateway::sdl();
    if std::env::var_os("UPDATE_SDL").is_some() {
        std::fs::write(
            concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql"),
            &served,
        )
        .unwrap();
        return;
    }
    assert_eq!(
        served, CHECKED_IN,
        "schema changed; see this file's doc to update the copy"
    );
}

/// The contract's schema (`shared/contract/schema.graphql`, copied into the repo): the minimum
/// the gateway must serve.
const CONTRACT: &str = include_str!("../contract-schema.graphql");

/// Every type, field, argument and enum value of `contract` that `served` lacks or shapes
/// differently: "every name here must exist with this shape; more may be added". An addition
/// must not make an old call invalid, so a new argument or input field must be optional.
fn contract_gaps(contract: &str, served: &str) -> Vec<String> {
    use async_graphql::parser::types::{TypeKind, TypeSystemDefinition};
    use std::collections::BTreeMap;

    let types = |sdl: &str| -> BTreeMap<String, TypeKind> {
        let document = async_graphql::parser::parse_schema(sdl).expect("valid SDL");
        document
            .definitions
            .into_iter()
            .filter_map(|definition| match definition {
                TypeSystemDefinition::Type(t) => Some((t.node.name.node.to_string(), t.node.kind)),
                _ => None,
            })
            .collect()
    };
    let (wanted, have) = (types(contract), types(served));
    let mut gaps = Vec::new();
    let optional =
        |ty: &async_graphql::parser::types::Type, has_default: bool| ty.nullable || has_default;
    for (name, kind) in &wanted {
        let Some(served_kind) = have.get(name) else {
            gaps.push(format!("type {name} is missing"));
            continue;
        };
        match (kind, served_kind) {
            (TypeKind::Scalar, TypeKind::Scalar) => {}
            (TypeKind::Object(want), TypeKind::Object(got)) => {
                for field in &want.fields {
                    let field = &field.node;
                    let Some(served_field) = got
                        .fields
                        .iter()
                        .find(|f| f.node.name.node == field.name.node)
                    else {
                        gaps.push(format!("{name}.{} is missing", field.name.node));
                        continue;
                    };
                    let served_field = &served_field.node;
                    if served_field.ty.node != field.ty.node {
                        gaps.push(format!(
                            "{name}.{} is {}, the contract says {}",
                            field.name.node, served_field.ty.node, field.ty.node
                        ));
                    }
                    for argument in &field.arguments {
                        let argument = &argument.node;
                        match served_field
                            .arguments
                            .iter()
                            .find(|a| a.node.name.node == argument.name.node)
                        {
                            None => gaps.push(format!(
                                "{name}.{}({}) is missing",
                                field.name.node, argument.name.node
                            )),
                            Some(a) if a.node.ty.node != argument.ty.node => gaps.push(format!(
                                "{name}.{}({}) is {}, the contract says {}",
                                field.name.node,
                                argument.name.node,
                                a.node.ty.node,
                                argument.ty.node
                            )),
                            Some(_) => {}
                        }
                    }
                    for extra in &served_field.arguments {
                        let extra = &extra.node;
                        let in_contract = field
                            .arguments
                            .iter()
                            .any(|a| a.node.name.node == extra.name.node);
                        if !in_contract && !optional(&extra.ty.node, extra.default_value.is_some())
                        {
                            gaps.push(format!(
                                "{name}.{}({}) is a required argument the contract lacks",
                                field.name.node, extra.name.node
                            ));
                        }
                    }
                }
            }
            (TypeKind::InputObject(want), TypeKind::InputObject(got)) => {
                for field in &want.fields {
                    let field = &field.node;
                    match got
                        .fields
                        .iter()
                        .find(|f| f.node.name.node == field.name.node)
                    {
                        None => gaps.push(format!("input {name}.{} is missing", field.name.node)),
                        Some(f) if f.node.ty.node != field.ty.node => gaps.push(format!(
                            "input {name}.{} is {}, the contract says {}",
                            field.name.node, f.node.ty.node, field.ty.node
                        )),
                        Some(_) => {}
                    }
                }
                for extra in &got.fields {
                    let extra = &extra.node;
                    let in_contract = want
                        .fields
                        .iter()
                        .any(|f| f.node.name.node == extra.name.node);
                    if !in_contract && !optional(&extra.ty.node, extra.default_value.is_some()) {
                        gaps.push(format!(
                            "input {name}.{} is required, the contract lacks it",
                            extra.name.node
                        ));
                    }
                }
            }
            (TypeKind::Enum(want), TypeKind::Enum(got)) => {
                for value in &want.values {
                    let value = &value.node.value.node;
                    if !got.values.iter().any(|v| v.node.value.node == *value) {
                        gaps.push(format!("enum {name} lacks {value}"));
                    }
                }
            }
            _ => gaps.push(format!(
                "{name} is another kind of type than the contract's"
            )),
        }
    }
    gaps
}

#[test]
fn served_sdl_has_everything_the_contract_names_in_its_shape() {
    let gaps = contract_gaps(CONTRACT, &graph_gateway::sdl());
    assert!(
        gaps.is_empty(),
        "the served schema breaks the contract:\n{}",
        gaps.join("\n")
    );
}

#[test]
fn the_contract_check_finds_what_is_missing_or_reshaped() {
    let served = graph_gateway::sdl();
    let broken = served
        .replace("analysisType: String!", "analysisType: String")
        .replace("\t\"\"\"\n\t`error` says why.\n\t\"\"\"\n\tFAILED\n", "");
    let gaps = contract_gaps(CONTRACT, &broken);
    assert!(
        gaps.iter()
            .any(|g| g.contains("analysisType is String, the contract says String!")),
        "{gaps:?}"
    );
    assert!(
        gaps.iter().any(|g| g == "enum AnalysisStatus lacks FAILED"),
        "{gaps:?}"
    );
    let extra_required = served.replace(
        "analysis(analysisId: ID!)",
        "analysis(analysisId: ID!, tenant: String!)",
    );
    let gaps = contract_gaps(CONTRACT, &extra_required);
    assert_eq!(
        gaps,
        ["Query.analysis(tenant) is a required argument the contract lacks"]
    );
}
