//! The history importer (`torsensor history import`): the input as a file
//! would be read (an xz or tar archive streamed member by member, or one
//! document, with or without CollecTor's `@type` line), the index built
//! from it written and read back; and the input as an index file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sensor_daemon::history::{Builder, Importer, Index};

fuzz_target!(|data: &[u8]| {
    let mut builder = Builder::new();
    let mut importer = Importer::new(&mut builder, None);
    importer.reader("fuzz", data, data.len() as u64);
    let report = importer.report;
    assert!(report.errors.len() <= report.error_count);
    let index = builder.finish();
    let bytes = index.to_bytes();
    let back = Index::read(&bytes[..], bytes.len() as u64).expect("an index we wrote reads back");
    let (a, b) = (index.summary(), back.summary());
    assert_eq!(
        (a.documents, a.addresses, a.intervals),
        (b.documents, b.addresses, b.intervals)
    );
    // Whatever the bytes, reading them as an index fails cleanly or gives
    // an index that answers.
    if let Ok(index) = Index::read(data, data.len() as u64) {
        let _ = index.summary();
        let _ = index.lookup(
            "192.0.2.1".parse().unwrap(),
            std::time::UNIX_EPOCH,
            &Default::default(),
        );
    }
});
