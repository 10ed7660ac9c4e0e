//! `POST /v1/batches/upload`: a CSV of numbers streamed by curl as one
//! batch.

use super::*;

/// A broadcast to a CSV of numbers, streamed as the request body by curl:
/// one batch; a bad line is named and leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_of_numbers_uploads_as_one_batch() {
    let mesh = Mesh::start(jwt_config()).await.unwrap();
    let t = token("acme");
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("numbers.csv");
    let mut text = String::from("number,ref\n");
    for i in 0..25_000 {
        text.push_str(&format!("+4477009{i:05},\"r{i}\"\r\n"));
    }
    std::fs::write(&good, &text).unwrap();
    let url = |q: &str| format!("http://{}/v1/batches/upload?{q}", mesh.http_addr);
    let upload = |token: Option<String>, file: std::path::PathBuf, q: &'static str| {
        let url = url(q);
        async move {
            curl(
                token.as_deref(),
                &[
                    "-X",
                    "POST",
                    "-H",
                    "Content-Type: text/csv",
                    "--data-binary",
                    &format!("@{}", file.display()),
                    &url,
                ],
            )
            .await
        }
    };
    // Refused before its body is read, a request carries a short one: a long
    // one would race the early answer (curl: broken pipe as it still sends).
    let short = dir.path().join("short.csv");
    std::fs::write(&short, "+447700900001\n+447700900002\n").unwrap();
    // Authentication comes first.
    upload(None, short.clone(), "body=Storm")
        .await
        .error(401, "UNAUTHENTICATED", "");
    let got = upload(
        Some(t.clone()),
        good.clone(),
        "body=Storm%20warning&priority=PRIORITY_HIGH",
    )
    .await;
    assert_eq!(got.status, 200, "{got:?}");
    let id = got.json()["batch_id"].as_str().unwrap().to_string();
    assert_eq!(got.json()["accepted"], 25_000);
    let m = get(&mesh, Some(&t), &format!("/v1/messages/{id}.24999"))
        .await
        .json();
    assert_eq!(
        (m["to"].as_str(), m["client_ref"].as_str()),
        (Some("+447700924999"), Some("r24999"))
    );
    assert_eq!(m["body"], "Storm warning");
    // Another tenant does not see it.
    get(&mesh, Some(&token("other")), &format!("/v1/batches/{id}"))
        .await
        .error(404, "NOT_FOUND", "");

    // Line 7 is bad: nothing is accepted.
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "+447700900001\n+447700900002\n\n+447700900004\n+447700900005\n+447700900006\n447700900007\n").unwrap();
    upload(Some(t.clone()), bad, "body=x")
        .await
        .error(400, "INVALID_ARGUMENT", "line 7");
    let batches = get(&mesh, Some(&t), "/v1/batches").await.json();
    assert_eq!(batches["batches"].as_array().unwrap().len(), 1, "{batches}");
    // A header field that is not one is named.
    upload(Some(t.clone()), short, "body=x&colour=red")
        .await
        .error(400, "INVALID_ARGUMENT", "colour");
}
