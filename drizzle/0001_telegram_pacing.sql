CREATE TABLE "tg_pacing" (
	"chat_id" text PRIMARY KEY NOT NULL,
	"next_at" timestamp with time zone NOT NULL
);
