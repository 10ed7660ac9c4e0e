//! A real store file with bytes flipped where data lives: it is refused at
//! open or load, or (where the flip hit unused space) it loads exactly what
//! was stored. It never loads something else.

use std::path::Path;

use smsmesh_coordinator::store::{
    FinalState, Outcome, Store, StoredBatch, StoredBatchState, WriteSet,
};

/// A store in `dir` with a finished batch of 20,000 messages, closed cleanly.
fn write_store(dir: &Path) {
    let store = Store::open(dir, false).unwrap();
    let batch = StoredBatch {
        id: 0xabc,
        total: 20_000,
        max_attempts: 3,
        messages: Vec::new(),
        synthetic_seed: Some(4),
        synthetic_body: None,
        accepted_unix_ms: 1,
        tenant: "t".into(),
        fingerprint: 0,
        list_body: None,
        ..Default::default()
    };
    store.insert_batch(&batch, Some("k")).unwrap().unwrap();
    let mut set = WriteSet::default();
    set.nodes.push((0, "n0".into()));
    for index in 0..20_000 {
        set.outcomes.push(Outcome {
            batch: 0xabc,
            index,
            state: if index % 97 == 0 {
                FinalState::Failed
            } else {
                FinalState::Sent
            },
            attempts: 1,
            node: 1,
            final_ms: 7,
            error: (index % 97 == 0).then(|| "no route".to_string()),
        });
    }
    set.batches.push(StoredBatchState {
        id: 0xabc,
        dispatched: 20_000,
        ..Default::default()
    });
    store.commit(&set).unwrap();
}

/// What the store in `dir` loads, as text, or the error it gives.
fn load(dir: &Path) -> Result<String, String> {
    let store = Store::open(dir, false).map_err(|e| e.to_string())?;
    let loaded = store.load().map_err(|e| e.to_string())?;
    let outcomes: Vec<_> = loaded.batches.iter().flat_map(|b| b.outcomes()).collect();
    Ok(format!(
        "{:?} {:?} {:?} {outcomes:?}",
        loaded.nodes,
        loaded.idempotency,
        loaded
            .batches
            .iter()
            .map(|b| (&b.batch, &b.state, &b.errors))
            .collect::<Vec<_>>()
    ))
}

#[test]
fn flipped_bytes_are_refused_or_change_nothing() {
    let clean = tempfile::tempdir().unwrap();
    write_store(clean.path());
    let file = clean.path().join("smsmesh.redb");
    let bytes = std::fs::read(&file).unwrap();
    let expected = load(clean.path()).unwrap();
    let (mut refused, mut same) = (0, 0);
    // 64 bytes flipped at each of 40 places spread over the file.
    for k in 1..=40 {
        let at = bytes.len() * k / 41;
        let mut damaged = bytes.clone();
        for b in &mut damaged[at..(at + 64).min(bytes.len())] {
            *b ^= 0x5a;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("smsmesh.redb"), &damaged).unwrap();
        match load(dir.path()) {
            Err(e) => {
                assert!(e.contains("smsmesh.redb"), "the error names the file: {e}");
                refused += 1;
            }
            Ok(got) => {
                assert_eq!(
                    got, expected,
                    "a flip at byte {at} was loaded as something else"
                );
                same += 1;
            }
        }
    }
    assert!(refused + same == 40);

    // Where the outcomes are: messages 1 to 16 of the row (all sent by node 1 on the
    // first attempt, final 7 ms after acceptance) become "no outcome yet". Every record still decodes; only the
    // pages' checksums can tell. Each copy of those bytes in the file is changed.
    let sent: Vec<u8> = [0x83u8, 1, 1, 0, 7, 0, 0].repeat(16);
    let mut damaged = bytes.clone();
    let mut copies = 0;
    let mut at = 0;
    while let Some(i) = damaged[at..]
        .windows(sent.len())
        .position(|w| w == sent.as_slice())
    {
        let start = at + i;
        for slot in damaged[start..start + sent.len()].chunks_mut(7) {
            slot[0] = 0x80; // a timed slot with no outcome
        }
        copies += 1;
        at = start + sent.len();
    }
    assert!(copies > 0, "the outcome rows are in the file");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("smsmesh.redb"), &damaged).unwrap();
    match load(dir.path()) {
        Ok(_) => panic!("sent messages silently turned pending"),
        Err(e) => assert!(e.contains("checksum"), "{e}"),
    }
}
