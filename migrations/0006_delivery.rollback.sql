DROP TABLE destination_sends;
DROP TABLE delivery_attempts;
DROP TABLE deliveries;
DROP TABLE destination_state;
