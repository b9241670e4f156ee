use super::*;
use crate::kube::inject::inject;

fn opts() -> InjectOptions {
    InjectOptions {
        image: "ghcr.io/meshguard/meshguard:test".into(),
        ..InjectOptions::default()
    }
}

fn review_of(operation: &str, object: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object,
            "oldObject": null,
            "dryRun": false,
        }
    }))
    .unwrap()
}

/// The response part of the answer.
fn answer(operation: &str, object: &Value) -> Value {
    let reviewed = review(&review_of(operation, object.clone()), &opts()).expect("a review");
    assert_eq!(reviewed.review["apiVersion"], API_VERSION);
    assert_eq!(reviewed.review["kind"], "AdmissionReview");
    let response = reviewed.review["response"].clone();
    assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    response
}

/// `object` with the answer's patch applied (json-patch crate).
fn patched(object: &Value, response: &Value) -> Value {
    let mut doc = object.clone();
    if let Some(patch) = response.get("patch") {
        assert_eq!(response["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(patch.as_str().unwrap())
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
    } else {
        assert!(response.get("patchType").is_none());
    }
    doc
}

/// What `inject` writes for the object (given as JSON text, which is
/// YAML), read back as JSON.
fn injected_text(object: &Value) -> Value {
    let out = inject(&serde_json::to_string(object).unwrap(), &opts()).unwrap();
    let yaml: serde_norway::Value = serde_norway::from_str(&out.yaml).unwrap();
    serde_json::to_value(yaml).unwrap()
}

fn yaml_docs(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(text)
        .map(|d| serde_norway::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .map(|v| serde_json::to_value(v).unwrap())
        .collect()
}

fn golden_docs(name: &str) -> Vec<Value> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/inject");
    yaml_docs(&std::fs::read_to_string(dir.join(name)).unwrap())
}

fn pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "web-7d9f-", "namespace": "shop", "annotations": annotations},
        "spec": {"containers": [{"name": "web", "image": "web:1", "ports": [{"containerPort": 8080}]}]}
    })
}

#[test]
fn every_golden_object_patched_equals_what_inject_writes() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/inject");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !name.ends_with(".in.yaml") || name.starts_with("err-") {
            continue;
        }
        for object in golden_docs(&name) {
            if object["kind"] == "List" {
                continue;
            }
            let response = answer("CREATE", &object);
            assert_eq!(response["allowed"], true, "{name}: {response}");
            let expected = injected_text(&object);
            assert_eq!(patched(&object, &response), expected, "{name}");
            let outcome = response["auditAnnotations"][AUDIT_KEY].as_str().unwrap();
            if expected == object {
                assert!(response.get("patch").is_none(), "{name}: {response}");
                assert!(outcome.starts_with("skipped: "), "{name}: {outcome}");
                let warning = &response["warnings"][0];
                assert!(
                    warning
                        .as_str()
                        .unwrap()
                        .starts_with("meshguard: no sidecar: "),
                    "{name}: {warning}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 35, "{checked}");
}

#[test]
fn a_pod_is_injected_with_one_patch_and_no_warning() {
    let object = golden_docs("kind-pod.in.yaml").remove(0);
    let response = answer("CREATE", &object);
    assert_eq!(response["allowed"], true);
    assert_eq!(response["auditAnnotations"][AUDIT_KEY], "injected");
    assert!(response.get("warnings").is_none(), "{response}");
    let result = patched(&object, &response);
    assert_eq!(result["spec"]["initContainers"][1]["name"], "meshguard");
    assert_eq!(
        result["metadata"]["annotations"]["meshguard.io/injected"],
        "native"
    );
    // Injecting the injected pod again changes nothing.
    let again = answer("CREATE", &result);
    assert!(again.get("patch").is_none(), "{again}");
    assert_eq!(
        again["auditAnnotations"][AUDIT_KEY],
        "skipped: already-injected"
    );
}

#[test]
fn skipped_objects_are_allowed_without_a_patch_and_say_why() {
    let response = answer("CREATE", &pod(json!({"meshguard.io/inject": "disabled"})));
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none());
    assert_eq!(
        response["warnings"],
        json!(["meshguard: no sidecar: opted-out"])
    );
    assert_eq!(
        response["auditAnnotations"][AUDIT_KEY],
        "skipped: opted-out"
    );

    let mut host = pod(json!({}));
    host["spec"]["hostNetwork"] = json!(true);
    let response = answer("CREATE", &host);
    assert_eq!(
        response["auditAnnotations"][AUDIT_KEY],
        "skipped: host-network"
    );

    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
    let response = answer("CREATE", &cm);
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none());
    assert_eq!(
        response["auditAnnotations"][AUDIT_KEY],
        "skipped: unsupported-kind"
    );
}

#[test]
fn opting_out_an_injected_pod_patches_the_sidecar_away() {
    let injected = patched(&pod(json!({})), &answer("CREATE", &pod(json!({}))));
    let mut opted_out = injected.clone();
    opted_out["metadata"]["annotations"]["meshguard.io/inject"] = json!("disabled");
    let response = answer("CREATE", &opted_out);
    assert_eq!(
        response["auditAnnotations"][AUDIT_KEY],
        "skipped: opted-out (removed the sidecar)"
    );
    let result = patched(&opted_out, &response);
    assert!(result["spec"].get("initContainers").is_none(), "{result}");
    assert_eq!(result, injected_text(&opted_out));
}

#[test]
fn pods_are_injected_on_create_only_and_workloads_on_update_too() {
    for op in ["UPDATE", "DELETE", "CONNECT"] {
        let response = answer(op, &pod(json!({})));
        assert_eq!(response["allowed"], true);
        assert!(response.get("patch").is_none(), "{op}");
        assert!(
            response["auditAnnotations"][AUDIT_KEY]
                .as_str()
                .unwrap()
                .contains(op),
            "{response}"
        );
    }
    let deployment = golden_docs("kind-deployment.in.yaml").remove(0);
    for op in ["CREATE", "UPDATE"] {
        let response = answer(op, &deployment);
        assert_eq!(
            patched(&deployment, &response),
            injected_text(&deployment),
            "{op}"
        );
    }
    // DELETE carries no object.
    let response = answer("DELETE", &Value::Null);
    assert_eq!(response["allowed"], true);
    assert_eq!(
        response["auditAnnotations"][AUDIT_KEY],
        "skipped: no object"
    );
}

#[test]
fn an_object_without_apiversion_and_kind_takes_them_from_the_request() {
    let mut bare = pod(json!({}));
    let full = bare.clone();
    bare.as_object_mut().unwrap().remove("apiVersion");
    bare.as_object_mut().unwrap().remove("kind");
    let response = answer("CREATE", &bare);
    let result = patched(&bare, &response);
    assert!(
        result.get("apiVersion").is_none(),
        "the patch leaves them alone"
    );
    let mut expected = injected_text(&full);
    expected.as_object_mut().unwrap().remove("apiVersion");
    expected.as_object_mut().unwrap().remove("kind");
    assert_eq!(result, expected);
}

#[test]
fn a_bad_annotation_or_a_malformed_pod_is_denied_with_the_reason() {
    let typo = golden_docs("err-unknown-annotation.in.yaml").remove(1);
    let response = answer("CREATE", &typo);
    assert_eq!(response["allowed"], false);
    assert!(response.get("patch").is_none());
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message
            .starts_with("meshguard: Pod shop/typo: annotation meshguard.io/exclude-inbound-port"),
        "{message}"
    );
    assert_eq!(response["status"]["code"], 400);

    let mut broken = pod(json!({}));
    broken["spec"]["containers"] = json!("not a list");
    let response = answer("CREATE", &broken);
    assert_eq!(response["allowed"], false);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(message.contains("Pod shop/web-7d9f-*"), "{message}");
    assert!(message.contains("containers"), "{message}");
}

#[test]
fn requests_that_are_not_admission_reviews_v1_are_refused() {
    let valid: Value = serde_json::from_slice(&review_of("CREATE", pod(json!({})))).unwrap();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = valid.clone();
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "invalid JSON"),
        (b"[1]".to_vec(), "expected an AdmissionReview object"),
        (
            with(&|v| v["apiVersion"] = json!("admission.k8s.io/v1beta1")),
            "apiVersion \"admission.k8s.io/v1beta1\": only admission.k8s.io/v1",
        ),
        (
            with(&|v| {
                v.as_object_mut().unwrap().remove("apiVersion");
            }),
            "apiVersion missing",
        ),
        (
            with(&|v| v["kind"] = json!("Pod")),
            "kind: expected AdmissionReview",
        ),
        (
            with(&|v| {
                v.as_object_mut().unwrap().remove("request");
            }),
            "request: missing",
        ),
        (
            with(&|v| {
                v["request"].as_object_mut().unwrap().remove("uid");
            }),
            "request.uid: missing",
        ),
        (with(&|v| v["request"]["uid"] = json!("")), "request.uid"),
        (with(&|v| v["request"]["uid"] = json!(7)), "request.uid"),
        (
            with(&|v| v["request"]["object"] = json!("a pod")),
            "request.object: expected an object",
        ),
    ];
    for (body, expected) in cases {
        let err = review(&body, &opts()).expect_err(expected);
        assert!(err.0.starts_with(expected), "{err} / {expected}");
    }
}

#[test]
fn names_come_from_generate_name_and_the_request_namespace() {
    let mut object = pod(json!({}));
    object["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("namespace");
    let reviewed = review(&review_of("CREATE", object), &opts()).unwrap();
    assert_eq!(reviewed.summary, "CREATE Pod shop/web-7d9f-*: injected");
}
