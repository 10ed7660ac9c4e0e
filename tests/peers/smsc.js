// An SMSC from another ecosystem for tests/smpp_peer.rs: the npm `smpp`
// package's server (node-smpp), answering as an operator's SMSC would. It
// binds anyone, answers each submit_sm with a hex message id, and 20 ms later
// sends a delivery receipt carrying the receipted_message_id and
// message_state TLVs (DELIVERED; UNDELIVERABLE for numbers ending in 6) as
// well as the receipt text. Prints "listening PORT" once it accepts binds.
'use strict';
const smpp = require('smpp');

let next = 0xa0000;
const server = smpp.createServer({}, (session) => {
  const ok = (pdu) => session.send(pdu.response());
  session.on('bind_transceiver', ok);
  session.on('bind_transmitter', ok);
  session.on('bind_receiver', ok);
  session.on('enquire_link', ok);
  session.on('unbind', (pdu) => {
    session.send(pdu.response());
    session.close();
  });
  session.on('submit_sm', (pdu) => {
    next += 1;
    // Upper case with leading zeros: the node is run with --smpp-ids hex.
    const id = next.toString(16).toUpperCase().padStart(10, '0');
    session.send(pdu.response({ message_id: id }));
    if ((pdu.registered_delivery & 0x03) === 0) return;
    const bad = pdu.destination_addr.endsWith('6');
    const stat = bad ? 'UNDELIV' : 'DELIVRD';
    const err = bad ? '034' : '000';
    setTimeout(() => {
      session.deliver_sm({
        source_addr: pdu.destination_addr,
        destination_addr: pdu.source_addr,
        esm_class: 0x04,
        short_message: `id:${id} sub:001 dlvrd:00${bad ? 0 : 1} submit date:2612051200 done date:2612051200 stat:${stat} err:${err} text:`,
        receipted_message_id: id.toLowerCase(),
        message_state: bad ? 5 : 2,
      });
    }, 20);
  });
  session.on('error', () => {});
});
server.listen(0, '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`);
});
