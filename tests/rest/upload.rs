//! `POST /v1/batches/upload`: a CSV of numbers streamed by curl as one
//! batch; and requests refused before their body is read (uploads, a JSON
//! body over the limit), answered while the client still sends it.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

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
    // Authentication comes first.
    upload(None, good.clone(), "body=Storm")
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
    upload(Some(t.clone()), good, "body=x&colour=red")
        .await
        .error(400, "INVALID_ARGUMENT", "colour");
}

/// Requests refused before their body is read (an upload without a token,
/// one with a bad second line, a JSON body over the size limit) over one
/// raw HTTP/1.1 connection: the answer comes while the client still sends
/// its body; the rest of the body is still read rather than the connection
/// reset (curl would see "broken pipe" instead of the answer); and the
/// connection then serves the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_is_answered_while_its_body_still_comes() {
    let config = CoordinatorConfig {
        max_request_bytes: 1 << 20,
        ..jwt_config()
    };
    let mesh = Mesh::start(config).await.unwrap();
    let t = token("acme");
    let mut conn = BufReader::new(TcpStream::connect(mesh.http_addr).await.unwrap());
    let upload = "/v1/batches/upload?body=x";
    let refusals = [
        (upload, None, "+447700900000\n", 401, "UNAUTHENTICATED"),
        (
            upload,
            Some(&t),
            "+447700900000\n07700 900000\n",
            400,
            "line 2",
        ),
        (
            "/v1/batches",
            Some(&t),
            "{\"to\": [",
            413,
            "POST /v1/batches/upload",
        ),
    ];
    for (path, auth, start, status, says) in refusals {
        // 8 MiB of numbers: more than the socket buffers hold.
        let mut body = start.as_bytes().to_vec();
        while body.len() < 8 << 20 {
            body.extend_from_slice(b"+447700900001\n");
        }
        let auth = auth.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: smsmesh\r\n{auth}\
             Content-Type: text/csv\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        // More than the 1 MiB a JSON body may have: the server stops
        // reading and answers, while 6 MiB are still to come.
        let (first, rest) = body.split_at(2 << 20);
        conn.write_all(first).await.unwrap();
        let (code, text) = answer(&mut conn).await;
        assert_eq!(code, status, "{text}");
        assert!(text.contains(says), "{text:?} should say {says:?}");
        // The rest goes out whole: nobody resets the connection under it.
        conn.write_all(rest)
            .await
            .expect("the rest of the body is read");
    }
    let list =
        format!("GET /v1/batches HTTP/1.1\r\nHost: smsmesh\r\nAuthorization: Bearer {t}\r\n\r\n");
    conn.write_all(list.as_bytes()).await.unwrap();
    let (code, text) = answer(&mut conn).await;
    assert_eq!(code, 200, "{text}");
    let batches = serde_json::from_str::<Value>(&text).unwrap()["batches"].clone();
    assert_eq!(batches, json!([]), "nothing was accepted");
}

/// Reads an HTTP/1.1 answer with a Content-Length: its status and body.
async fn answer(conn: &mut BufReader<TcpStream>) -> (u16, String) {
    let read = async {
        let mut line = String::new();
        conn.read_line(&mut line).await.unwrap();
        let status = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut length = 0;
        loop {
            line.clear();
            conn.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        conn.read_exact(&mut body).await.unwrap();
        (status, String::from_utf8(body).unwrap())
    };
    tokio::time::timeout(LONG, read).await.expect("an answer")
}
