//! Label selectors, matched as the API server matches them: a Service's map selector and
//! a `LabelSelector` (`matchLabels` and `matchExpressions`).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` match a map selector (a Service's): every key equal. An empty
/// selector matches nothing here (a Service without selector has no managed endpoints).
pub fn map_selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether `labels` match a LabelSelector (`matchLabels` and `matchExpressions`). An
/// empty selector matches everything, as in the API.
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let ml = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let me = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let have = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        }
    });
    ml && me
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_label_selector_matches_all_and_empty_map_selector_none() {
        assert!(selects(&LabelSelector::default(), &labels(&[])));
        assert!(!map_selects(&BTreeMap::new(), &labels(&[("a", "b")])));
        assert!(map_selects(
            &labels(&[("a", "b")]),
            &labels(&[("a", "b"), ("c", "d")])
        ));
    }

    #[test]
    fn expressions_and_labels_are_anded() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("zone", "a")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "NotIn".into(),
                values: Some(vec!["db".into()]),
            }]),
        };
        assert!(selects(&sel, &labels(&[("zone", "a")])));
        assert!(selects(&sel, &labels(&[("zone", "a"), ("tier", "web")])));
        assert!(!selects(&sel, &labels(&[("zone", "a"), ("tier", "db")])));
        assert!(!selects(&sel, &labels(&[("zone", "b")])));
    }
}
